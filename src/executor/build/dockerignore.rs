//! `.dockerignore`, read the way the Docker CLI reads it (moby/patternmatcher).
//!
//! - One pattern a line; blank lines and lines starting with `#` are skipped;
//!   surrounding spaces are trimmed.
//! - Patterns are relative to the context root, leading `/` or not: `*.log` matches
//!   `a.log` only, `**/*.log` matches at any depth.
//! - `*` matches within one path segment, `?` one character, `[a-z]` / `[^a-z]` a
//!   class, `\` escapes; a whole `**` segment matches any number of segments.
//! - A path is excluded when a pattern matches it or one of its parent folders.
//! - `!pattern` re-includes; the last pattern that matches decides.

/// The parsed patterns of one `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    exception: bool,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let segments = clean(pattern);
            if segments.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments,
                exception,
            });
        }
        DockerIgnore { patterns }
    }

    /// True when some pattern is an exception: then an excluded folder must still
    /// be walked, as a file inside it may be let back in.
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub fn is_excluded(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the answer needs matching.
            if pattern.exception != excluded {
                continue;
            }
            let hit = (1..=parts.len()).any(|n| match_segments(&pattern.segments, &parts[..n]));
            if hit {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

/// The pattern's segments after `filepath.Clean`: no empty or `.` segments, `..`
/// applied, and no leading `/`.
fn clean(pattern: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for seg in pattern.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                // Above the root: a path never matches it, like in Docker.
                if out.pop().is_none() {
                    return vec!["..".to_string()];
                }
            }
            s => out.push(s.to_string()),
        }
    }
    out
}

fn match_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| match_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((p, path_rest)) => {
                glob(first.as_bytes(), p.as_bytes()) && match_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// Matches one segment: `*`, `?`, `[...]`, `\x`. A malformed class matches nothing.
fn glob(pat: &[u8], name: &[u8]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(b'*') => {
            let rest = &pat[1..];
            (0..=name.len()).any(|skip| glob(rest, &name[skip..]))
        }
        Some(b'?') => !name.is_empty() && glob(&pat[1..], &name[1..]),
        Some(b'[') => {
            let Some((&c, name_rest)) = name.split_first() else {
                return false;
            };
            match class(&pat[1..], c) {
                Some((true, pat_rest)) => glob(pat_rest, name_rest),
                _ => false,
            }
        }
        Some(b'\\') if pat.len() > 1 => {
            name.first() == Some(&pat[1]) && glob(&pat[2..], &name[1..])
        }
        Some(&c) => name.first() == Some(&c) && glob(&pat[1..], &name[1..]),
    }
}

/// Matches `c` against a class body (after `[`); returns whether it matched and
/// the pattern after `]`, or `None` when the class never closes.
fn class(pat: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let (negated, mut i) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *pat.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negated, &pat[i + 1..]));
        }
        first = false;
        let lo = if lo == b'\\' {
            i += 1;
            *pat.get(i)?
        } else {
            lo
        };
        i += 1;
        if pat.get(i) == Some(&b'-') && pat.get(i + 1).is_some_and(|&h| h != b']') {
            let hi = pat[i + 1];
            matched |= lo <= c && c <= hi;
            i += 2;
        } else {
            matched |= lo == c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(rules: &str, path: &str) -> bool {
        DockerIgnore::parse(rules).is_excluded(path)
    }

    #[test]
    fn comments_blank_lines_and_spaces() {
        let ig = DockerIgnore::parse("# a comment\n\n   secret.txt  \n\t\n");
        assert!(ig.is_excluded("secret.txt"));
        assert!(!ig.is_excluded("# a comment"));
        assert!(!ig.is_excluded("other.txt"));
    }

    #[test]
    fn patterns_are_anchored_at_the_root() {
        assert!(excluded("*.log", "a.log"));
        assert!(!excluded("*.log", "dir/a.log"));
        assert!(excluded("/*.log", "a.log"));
        assert!(excluded("dir/*.log", "dir/a.log"));
        assert!(!excluded("dir/*.log", "dir/sub/a.log"));
        assert!(excluded("./dir//x", "dir/x"));
    }

    #[test]
    fn single_character_and_classes() {
        assert!(excluded("file?.txt", "file1.txt"));
        assert!(!excluded("file?.txt", "file10.txt"));
        assert!(excluded("?", "a/b"), "the folder `a` matches");
        assert!(excluded("[a-c].txt", "b.txt"));
        assert!(!excluded("[a-c].txt", "d.txt"));
        assert!(excluded("[^a-c].txt", "d.txt"));
        assert!(!excluded("[^a-c].txt", "a.txt"));
        assert!(
            !excluded("[a-c.txt", "a.txt"),
            "an unclosed class matches nothing"
        );
        assert!(excluded("\\*.txt", "*.txt"));
        assert!(!excluded("\\*.txt", "a.txt"));
    }

    #[test]
    fn double_star_spans_folders() {
        assert!(excluded("**/*.log", "a.log"));
        assert!(excluded("**/*.log", "x/y/a.log"));
        assert!(excluded("a/**/b", "a/b"));
        assert!(excluded("a/**/b", "a/x/y/b"));
        assert!(!excluded("a/**/b", "c/a/b"));
        assert!(excluded("**", "anything/at/all"));
        assert!(excluded("node_modules/**", "node_modules/x/y.js"));
    }

    #[test]
    fn a_folder_takes_its_contents_with_it() {
        assert!(excluded("build", "build/out/a.o"));
        assert!(excluded("build/", "build/a.o"));
        assert!(!excluded("build", "src/build.rs"));
    }

    #[test]
    fn exceptions_let_files_back_in_and_the_last_match_wins() {
        let rules = "*.md\n!README.md\n";
        assert!(excluded(rules, "CHANGES.md"));
        assert!(!excluded(rules, "README.md"));
        let rules = "docs\n!docs/keep.txt\n";
        assert!(excluded(rules, "docs/other.txt"));
        assert!(!excluded(rules, "docs/keep.txt"));
        let rules = "!README.md\n*.md\n";
        assert!(excluded(rules, "README.md"), "a later exclusion wins");
        assert!(DockerIgnore::parse(rules).has_exceptions());
        assert!(!DockerIgnore::parse("*.md").has_exceptions());
    }

    #[test]
    fn patterns_above_the_root_match_nothing() {
        assert!(!excluded("../x", "x"));
        assert!(excluded("a/../x", "x"));
    }
}
