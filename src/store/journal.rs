//! The token journal: every challenge token path is recorded before it is written, so a run
//! killed mid-order leaves nothing the next run does not remove.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Error, Store};

impl Store {
    fn intent_path(&self) -> PathBuf {
        self.root.join("install.intent")
    }

    /// Records what an install is about to change, before it changes anything (the lifecycle's
    /// type; written atomically).
    pub fn write_intent<T: serde::Serialize>(&self, intent: &T) -> Result<(), Error> {
        let path = self.intent_path();
        let json = serde_json::to_vec_pretty(intent).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source,
        })?;
        crate::fsutil::write_atomic(&path, &json, crate::fsutil::PRIVATE_MODE)
            .map_err(Error::io("write", &path))
    }

    /// The intent an install left behind (it was killed before finishing), if any.
    pub fn read_intent<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        let path = self.intent_path();
        match crate::fsutil::read_limited(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| Error::Corrupt { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Removes the intent: the install it describes is finished (or rolled back).
    pub fn clear_intent(&self) -> Result<(), Error> {
        let path = self.intent_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path)(e)),
        }
    }

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

    /// Takes the token paths an earlier run recorded (it may have been killed before clearing
    /// them) and empties the journal. Removing the files is the caller's: through a safely opened
    /// directory, never by path.
    pub fn take_journal(&self) -> Result<Vec<PathBuf>, Error> {
        let journal = self.journal_path();
        let text = match fs::read_to_string(&journal) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read", &journal)(e)),
        };
        fs::remove_file(&journal).map_err(Error::io("remove", &journal))?;
        Ok(text
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let a = dir.path().join("tok_en-1");
        let b = dir.path().join("tok_en-2");
        store.journal_token(&a).unwrap();
        store.journal_token(&b).unwrap();
        assert_eq!(store.take_journal().unwrap(), vec![a, b]);
        assert!(store.take_journal().unwrap().is_empty());
    }
}
