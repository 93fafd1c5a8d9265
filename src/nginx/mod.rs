//! Everything nginx: the lexer and parser (spans, includes, lossless), discovery of server
//! blocks and of the directory each serves the ACME challenge from (nginx's own location
//! matching), minimal edits, the change transaction (edit, `nginx -t`, reload, restore), control
//! of the running master, and loopback probes of what it serves.

pub mod ctl;
pub mod discovery;
pub mod edit;
pub mod lexer;
pub mod load;
pub mod location;
pub mod parser;
pub mod pcre;
pub mod probe;
pub mod source;
pub mod transaction;

pub use ctl::{CtlError, NginxCtl};
pub use load::{LoadError, Paths};
pub use parser::{Config, Directive, FileId, ParseError};
pub use source::{DiskSource, DumpSource, Source};
