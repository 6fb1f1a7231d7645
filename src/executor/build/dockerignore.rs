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
//!
//! Invariant: matching takes time polynomial in the pattern and the path (at most
//! pattern length × path length byte comparisons per segment pair, and segments ×
//! path segments per pattern), never exponential: a `.dockerignore` comes from the
//! job's repository, and a pattern like `*a*a*a*…b` must not hold the worker.

/// The parsed patterns of one `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<Segment>,
    exception: bool,
}

/// One `/`-separated part of a pattern.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// A whole `**`: any number of path segments, none included.
    AnyDepth,
    /// Matches exactly one path segment.
    Glob(Vec<Token>),
    /// A malformed class (`[` never closed): matches no path segment.
    Never,
}

/// One element of a segment's glob.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Byte(u8),
    /// `?`: any one byte.
    One,
    /// `*`: any run of bytes within the segment.
    Star,
    /// `[...]`: ranges (a single byte is `(c, c)`), negated by a leading `^`.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    /// Whether this one-byte token (anything but `*`) matches `c`.
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Byte(b) => *b == c,
            Token::One => true,
            Token::Star => false,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }
        }
    }
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
                segments: segments.iter().map(|s| compile(s)).collect(),
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
        let parts: Vec<&[u8]> = path
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::as_bytes)
            .collect();
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

/// One pattern segment: `**`, or a glob of `*`, `?`, `[...]`, `\x` and bytes.
fn compile(segment: &str) -> Segment {
    if segment == "**" {
        return Segment::AnyDepth;
    }
    let pat = segment.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            b'*' => {
                // `**` inside a segment is the same as `*`.
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
                i += 1;
            }
            b'?' => {
                tokens.push(Token::One);
                i += 1;
            }
            b'[' => match class(&pat[i + 1..]) {
                Some((token, used)) => {
                    tokens.push(token);
                    i += 1 + used;
                }
                None => return Segment::Never,
            },
            b'\\' if i + 1 < pat.len() => {
                tokens.push(Token::Byte(pat[i + 1]));
                i += 2;
            }
            c => {
                tokens.push(Token::Byte(c));
                i += 1;
            }
        }
    }
    Segment::Glob(tokens)
}

/// A class body (after `[`): the token and how many bytes it took, `]` included;
/// `None` when the class never closes. A `]` first in the class is a byte of it.
fn class(pat: &[u8]) -> Option<(Token, usize)> {
    let (negated, mut i) = match pat.first() {
        Some(b'^') => (true, 1),
        _ => (false, 0),
    };
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let lo = *pat.get(i)?;
        if lo == b']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
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
            ranges.push((lo, pat[i + 1]));
            i += 2;
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// Whether the pattern's segments match the path's, `**` spanning any number.
///
/// Linear-time wildcard matching (no backtracking beyond the last `**`): on a
/// mismatch, only the most recent `**` takes one more segment. That is enough
/// because a later `**` can absorb whatever an earlier one would have, so
/// hostile patterns cost at most `segments × path segments` comparisons.
fn match_segments(pattern: &[Segment], path: &[&[u8]]) -> bool {
    wildcard(
        pattern,
        path,
        |s| *s == Segment::AnyDepth,
        |s, part| match s {
            Segment::Glob(tokens) => glob(tokens, part),
            Segment::AnyDepth | Segment::Never => false,
        },
    )
}

/// Matches one segment, the same way as [`match_segments`] with `*` for `**`.
fn glob(tokens: &[Token], name: &[u8]) -> bool {
    wildcard(tokens, name, |t| *t == Token::Star, |t, c| t.matches(*c))
}

/// The classic two-pointer wildcard match: `is_star` items match any run of
/// items of `text`, every other item exactly one that `one` accepts. At most
/// `pattern.len() × text.len()` calls of `one`.
fn wildcard<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last star seen, and where in the text the run it matches would end.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if let Some(item) = pattern.get(p) {
            if is_star(item) {
                star = Some((p, t));
                p += 1;
                continue;
            }
            if one(item, &text[t]) {
                p += 1;
                t += 1;
                continue;
            }
        }
        match star {
            // Let the star take one more item and try the rest again.
            Some((sp, st)) => {
                star = Some((sp, st + 1));
                p = sp + 1;
                t = st + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(is_star)
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
    fn hostile_patterns_are_matched_without_backtracking() {
        // With backtracking, each `*` retried at every position: ~C(200, 20) tries.
        let stars = format!("{}b", "*a".repeat(20));
        let long = "a".repeat(200);
        assert!(!excluded(&stars, &long));
        assert!(excluded(&stars, &format!("{long}b")));
        assert!(!excluded(
            &format!("{stars}\n{stars}\n{stars}"),
            &format!("x/{long}")
        ));
        // The same across folders: many `**` against a deep path that misses at the end.
        let deep = vec!["a"; 200].join("/");
        let spans = format!("{}b", "**/a/".repeat(20));
        assert!(!excluded(&spans, &deep));
        assert!(excluded(&spans, &format!("{deep}/b")));
        let ig = DockerIgnore::parse(&format!("{stars}\n!{stars}\n{spans}"));
        assert!(!ig.is_excluded(&deep));
    }

    #[test]
    fn the_matcher_agrees_with_docker_on_stars() {
        assert!(excluded("*", "anything"));
        assert!(excluded("a*", "a"));
        assert!(excluded("*a*b*", "xxaxxbxx"));
        assert!(!excluded("*a*b", "xxaxxbxx"));
        assert!(excluded("a**b", "axyzb"), "`**` inside a segment is `*`");
        assert!(!excluded("a**b", "ax/yb"), "and stays inside the segment");
        assert!(excluded("**/x/**/y", "x/y"));
        assert!(excluded("**/x/**/y", "p/x/q/r/y"));
        assert!(!excluded("**/x/**/y", "p/x/q/r/z"));
        assert!(excluded("x/**", "x/a"));
        assert!(excluded("[]a]", "]"), "a `]` first is part of the class");
        assert!(excluded("[\\]]", "]"));
        assert!(!excluded("*[", "a["), "a class that never closes");
        assert!(
            excluded("a\\", "a\\"),
            "a lone trailing backslash is itself"
        );
    }

    #[test]
    fn patterns_above_the_root_match_nothing() {
        assert!(!excluded("../x", "x"));
        assert!(excluded("a/../x", "x"));
    }
}
