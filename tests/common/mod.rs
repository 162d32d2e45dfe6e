#![allow(dead_code)]
pub mod dns;
pub mod harness;
pub mod mx;
