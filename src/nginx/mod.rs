//! Everything nginx: the lexer and parser (spans, includes, lossless), discovery of server
//! blocks and of the directory each serves the ACME challenge from (nginx's own location
//! matching), and, for `enroll`, minimal edits and signal-based reloads.

pub mod discovery;
pub mod edit;
pub mod lexer;
pub mod location;
pub mod parser;
pub mod reload;
pub mod source;

pub use parser::{Config, Directive, FileId, ParseError};
pub use source::{DiskSource, DumpSource, Source};
