//! Reconcilers that mirror CloudPillar resources into IoT Hub device twins.
