//! The dead-letter record: what intake keeps of a quarantined frame. It
//! lives with the other records in [`crate::records`].

pub use crate::records::DeadLetter;
