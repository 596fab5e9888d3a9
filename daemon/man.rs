//! Man pages for packagers (`packaging/build.sh`): `ORCH_GENERATE_MAN=DIR orchd` writes
//! `orchd.8` from the clap definition and, with `ORCH_CONFIG_REFERENCE=docs/configuration.md`,
//! `orchd.toml.5` from the config reference, then exits before any argument is read.

use std::path::Path;

/// Writes the pages and exits when `ORCH_GENERATE_MAN` names a directory; else returns.
pub fn generate_if_asked(cmd: clap::Command) {
    let Some(dir) = std::env::var_os("ORCH_GENERATE_MAN").filter(|d| !d.is_empty()) else {
        return;
    };
    let dir = Path::new(&dir);
    let reference = std::env::var_os("ORCH_CONFIG_REFERENCE").filter(|p| !p.is_empty());
    let result = write_orchd(dir, cmd).and_then(|()| match &reference {
        Some(md) => {
            let text = std::fs::read_to_string(md)?;
            std::fs::write(dir.join("orchd.toml.5"), config_page(&text))
        }
        None => Ok(()),
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("orchd: cannot write the man pages: {e}");
            std::process::exit(1)
        }
    }
}

fn write_orchd(dir: &Path, cmd: clap::Command) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = cmd.after_long_help(
        "orchd is usually run by systemd: orchd.socket (socket activation on \
         /run/orch/orchd.sock, group orch) and orchd.service for the system daemon, or \
         `systemctl --user enable --now orchd` for a user's own. Under systemd it logs to the \
         journal with structured fields: journalctl -u orchd OBJECTIVE_ID=ID. \
         SIGHUP re-reads the config. See orchd.toml(5), orchctl(1), /usr/share/doc/orch.",
    );
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .title("ORCHD")
        .section("8")
        .source(format!("orch {}", env!("CARGO_PKG_VERSION")))
        .manual("orch manual")
        .render(&mut buf)?;
    std::fs::write(dir.join("orchd.8"), buf)
}

/// Text made safe for roff: backslashes doubled, and a leading `.` or `'` (a request)
/// escaped.
fn roff_text(line: &str) -> String {
    let s = line.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}

/// `orchd.toml(5)` from the Markdown config reference: headings become sections, fenced code
/// and tables are kept as they are (no fill), links keep their text.
pub fn config_page(markdown: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        ".TH ORCHD.TOML 5 \"\" \"orch {}\" \"orch manual\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(".SH NAME\norchd.toml \\- configuration file of orchd\n");
    out.push_str(".SH SYNOPSIS\n/etc/orch/orchd.toml (system daemon), ~/.config/orch/orchd.toml (user daemon)\n");
    let mut in_code = false;
    let mut in_table = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            out.push_str(if in_code {
                ".fi\n.RE\n"
            } else {
                ".RS 4\n.nf\n"
            });
            in_code = !in_code;
            continue;
        }
        if in_code {
            out.push_str(&roff_text(line));
            out.push('\n');
            continue;
        }
        let table_line = line.starts_with('|');
        if table_line != in_table {
            out.push_str(if table_line { ".nf\n" } else { ".fi\n" });
            in_table = table_line;
        }
        if table_line {
            if !line.starts_with("|--") && !line.starts_with("| --") && !line.starts_with("|:") {
                out.push_str(&roff_text(&strip_inline(line)));
                out.push('\n');
            }
            continue;
        }
        if let Some(h) = line.strip_prefix("# ") {
            // The document's title: its first words make the DESCRIPTION section.
            let _ = h;
            out.push_str(".SH DESCRIPTION\n");
        } else if let Some(h) = line.strip_prefix("## ") {
            out.push_str(&format!(
                ".SH \"{}\"\n",
                roff_text(&strip_inline(h)).to_uppercase()
            ));
        } else if let Some(h) = line.strip_prefix("### ") {
            out.push_str(&format!(".SS \"{}\"\n", roff_text(&strip_inline(h))));
        } else if line.trim().is_empty() {
            out.push_str(".PP\n");
        } else if let Some(item) = line.strip_prefix("- ").or_else(|| line.strip_prefix("* ")) {
            out.push_str(".IP \\(bu 2\n");
            out.push_str(&roff_text(&strip_inline(item)));
            out.push('\n');
        } else {
            out.push_str(&roff_text(&strip_inline(line.trim_start())));
            out.push('\n');
        }
    }
    if in_code {
        out.push_str(".fi\n.RE\n");
    }
    if in_table {
        out.push_str(".fi\n");
    }
    out.push_str(".SH \"SEE ALSO\"\norchd(8), orchctl(1), /usr/share/doc/orch/configuration.md\n");
    out
}

/// Markdown inline marks removed: `code`, **bold**, `[text](link)` → text.
fn strip_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match (after.find("]("), after.find(']')) {
            (Some(close), Some(first)) if close == first => {
                let text = &after[..close];
                let tail = &after[close + 2..];
                match tail.find(')') {
                    Some(end) => {
                        out.push_str(text);
                        rest = &tail[end + 1..];
                    }
                    None => {
                        out.push('[');
                        rest = after;
                    }
                }
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("**", "").replace('`', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_page_has_sections_code_and_escapes() {
        let md = "# Configuring orchd\n\nSee [the example](examples/orchd.toml) and `max_parallel`.\n\n## `[logs]`\n\n```toml\n.hidden = 'a\\b'\n```\n| key | default |\n|-----|---------|\n| a | 1 |\n\n- one -item\n";
        let page = config_page(md);
        assert!(page.starts_with(".TH ORCHD.TOML 5"), "{page}");
        assert!(page.contains(".SH DESCRIPTION\n"), "{page}");
        assert!(page.contains("See the example and max_parallel."), "{page}");
        assert!(page.contains(".SH \"[LOGS]\"\n"), "{page}");
        assert!(page.contains(".nf\n\\&.hidden = 'a\\eb'\n.fi\n"), "{page}");
        assert!(page.contains("| a | 1 |\n"), "{page}");
        assert!(!page.contains("|-----|"), "{page}");
        assert!(page.contains(".IP \\(bu 2\none \\-item\n"), "{page}");
    }

    #[test]
    fn the_real_reference_converts() {
        let md = include_str!("../docs/configuration.md");
        let page = config_page(md);
        assert!(
            page.contains(".SH \"[SERVER]: WHAT CLIENTS MAY HOLD\""),
            "{}",
            &page[..400]
        );
        assert_eq!(page.matches(".nf\n").count(), page.matches(".fi\n").count());
    }
}
