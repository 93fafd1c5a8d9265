//! The token journal: every challenge token path is recorded before it is written, so a run
//! killed mid-order leaves nothing the next run does not remove.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Error, Store};

impl Store {
    fn journal_path(&self) -> PathBuf {
        self.root.join("tokens.journal")
    }

    /// Records a token path before it is written.
    pub fn journal_token(&self, path: &Path) -> Result<(), Error> {
        let journal = self.journal_path();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(Error::io("open", &journal))?;
        writeln!(f, "{}", path.display())
            .and_then(|()| f.sync_data())
            .map_err(Error::io("write", &journal))
    }

    /// Removes every token an earlier run recorded (it may have been killed before clearing
    /// them) and empties the journal. Returns the paths removed.
    pub fn sweep_tokens(&self) -> Result<Vec<PathBuf>, Error> {
        let journal = self.journal_path();
        let text = match fs::read_to_string(&journal) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &journal)(e)),
        };
        let mut removed = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let p = PathBuf::from(line);
            // Only files named like a token; never follow a link (remove_file does not).
            let is_token = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(crate::acme::jws::is_valid_token);
            if is_token && fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
        fs::remove_file(&journal).map_err(Error::io("remove", &journal))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_journal_sweeps_only_token_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let token = dir.path().join("tok_en-1");
        let other = dir.path().join("not.a.token");
        fs::write(&token, "x").unwrap();
        fs::write(&other, "x").unwrap();
        store.journal_token(&token).unwrap();
        store.journal_token(&other).unwrap();
        assert_eq!(store.sweep_tokens().unwrap(), vec![token.clone()]);
        assert!(!token.exists() && other.exists());
        assert!(store.sweep_tokens().unwrap().is_empty());
    }
}
