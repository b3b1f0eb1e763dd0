//! The adversarial suite: attacks on a real running gateway, each asserting
//! the documented refusal and that the gateway and other clients are fine
//! afterwards.

mod limits;
mod outage;
