//! An IoT-Hub-compatible edge hub: MQTT device endpoint, REST service API, DPS and a durable store.
