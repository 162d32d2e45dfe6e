#![allow(dead_code, unused_imports)]
pub mod dns;
pub mod harness;
pub mod mx;
