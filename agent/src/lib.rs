//! The CloudPillar device agent.
