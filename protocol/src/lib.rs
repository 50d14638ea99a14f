//! Twin documents, cloud/device messages and signing shared by the operator, hub and agent.
