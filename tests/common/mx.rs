pub use sluice::testkit::mx::*;
