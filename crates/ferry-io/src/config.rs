//! Loading a server's TOML config file, the same way for every program: read it, parse it (an error names the
//! file), take relative paths from the file's folder (as `sshd_config` and `postgresql.conf` do, not from wherever
//! the program was started), then let the config validate itself before anything runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

/// A config file type.
pub trait ConfigFile: DeserializeOwned {
    /// What the file is called in errors (`"comms config"`).
    const WHAT: &'static str;

    /// The paths in the config, resolved from the config file's folder at load.
    fn paths(&mut self) -> Vec<&mut PathBuf>;

    /// Check the values, and parse what is still text into its typed form; called once, at load.
    fn validate(&mut self) -> anyhow::Result<()>;
}

/// Read, parse, resolve relative paths and validate the config file at `path`.
pub fn load<T: ConfigFile>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the {} {}", T::WHAT, path.display()))?;
    let mut cfg: T = toml::from_str(&text).with_context(|| format!("{} is not a valid {}", path.display(), T::WHAT))?;
    for p in cfg.paths() {
        *p = relative_to_config(path, p);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// A path from a config file, as the program should open it: relative paths are taken from the config file's
/// folder, absolute ones are kept.
pub fn relative_to_config(config_file: &Path, p: &Path) -> PathBuf {
    match config_file.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Demo {
        dir: PathBuf,
        abs: PathBuf,
        n: u32,
    }

    impl ConfigFile for Demo {
        const WHAT: &'static str = "demo config";
        fn paths(&mut self) -> Vec<&mut PathBuf> {
            vec![&mut self.dir, &mut self.abs]
        }
        fn validate(&mut self) -> anyhow::Result<()> {
            anyhow::ensure!(self.n > 0, "n must be positive");
            Ok(())
        }
    }

    #[test]
    fn paths_are_taken_from_the_config_folder_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("demo.toml");
        std::fs::write(&file, "dir = \"data\"\nabs = \"/srv/x\"\nn = 1\n").unwrap();
        let cfg: Demo = load(&file).unwrap();
        assert_eq!(cfg.dir, dir.path().join("data"));
        assert_eq!(cfg.abs, PathBuf::from("/srv/x"));
        std::fs::write(&file, "dir = 1\n").unwrap();
        let err = format!("{:#}", load::<Demo>(&file).err().unwrap());
        assert!(err.starts_with(&format!("{} is not a valid demo config", file.display())), "{err}");
        std::fs::write(&file, "dir = \"d\"\nabs = \"a\"\nn = 0\n").unwrap();
        assert_eq!(format!("{}", load::<Demo>(&file).err().unwrap()), "n must be positive");
        let missing = format!("{}", load::<Demo>(&dir.path().join("none.toml")).err().unwrap());
        assert!(missing.starts_with("cannot read the demo config"), "{missing}");
    }
}
