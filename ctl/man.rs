//! Man pages from the clap definitions (for packagers: `packaging/build.sh`):
//! `ORCH_GENERATE_MAN=DIR orchctl` writes `orchctl.1` and one `orchctl-SUBCOMMAND.1` per
//! subcommand into DIR and exits, before any argument is read.

use std::path::Path;

use clap::CommandFactory;

/// Writes the pages and exits when `ORCH_GENERATE_MAN` names a directory; else returns.
pub fn generate_if_asked() {
    let Some(dir) = std::env::var_os("ORCH_GENERATE_MAN").filter(|d| !d.is_empty()) else {
        return;
    };
    match write_pages(Path::new(&dir)) {
        Ok(n) => {
            println!("wrote {n} man pages to {}", Path::new(&dir).display());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("orchctl: cannot write the man pages: {e}");
            std::process::exit(1)
        }
    }
}

/// Writes `orchctl.1` and the subcommands' pages; returns how many.
pub fn write_pages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let cmd = crate::cli::Cli::command();
    let version = env!("CARGO_PKG_VERSION");
    let mut n = 0;
    let mut write = |name: &str, cmd: clap::Command| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd)
            .title(name.to_ascii_uppercase())
            .section("1")
            .source(format!("orch {version}"))
            .manual("orch manual")
            .render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        n += 1;
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap takes static names here; this runs once and exits.
        let name: &'static str = Box::leak(format!("orchctl-{}", sub.get_name()).into_boxed_str());
        let page = sub
            .clone()
            .name(name)
            .bin_name(format!("orchctl {}", sub.get_name()))
            .version(version);
        write(name, page)?;
    }
    let cmd = cmd.after_long_help(
        "Each subcommand has its own page: orchctl-submit(1), orchctl-status(1), ... \
         See also orchd(8), orchd.toml(5) and /usr/share/doc/orch.",
    );
    write("orchctl", cmd)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_subcommand_and_the_main_page() {
        let dir = tempfile::tempdir().expect("temp dir");
        let n = write_pages(dir.path()).expect("pages");
        let subs = crate::cli::Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .count();
        assert_eq!(n, subs + 1);
        let main = std::fs::read_to_string(dir.path().join("orchctl.1")).expect("orchctl.1");
        assert!(main.starts_with(".ie"), "{}", &main[..80]);
        assert!(main.contains(".TH ORCHCTL 1"), "{main}");
        let submit =
            std::fs::read_to_string(dir.path().join("orchctl-submit.1")).expect("submit page");
        assert!(submit.contains(".TH ORCHCTL-SUBMIT 1"), "{submit}");
        assert!(submit.contains("\\-\\-retries"), "{submit}");
        assert!(dir.path().join("orchctl-doctor.1").exists());
    }
}
