pub use sluice::testkit::dns::*;
