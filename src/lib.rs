//! soe-uring: the SOE reliable-UDP protocol.
#![deny(unsafe_code)]

pub mod protocol;
