pub mod mapping;
pub mod source;
pub mod extract;
pub mod sample;
