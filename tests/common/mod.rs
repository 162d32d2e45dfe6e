#![allow(dead_code)]
pub mod dns;
pub mod mx;
