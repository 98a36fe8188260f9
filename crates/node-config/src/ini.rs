//! `config.ini` as node providers write it: `key=value` lines, `#` or `;` comments, blank
//! lines, Windows line endings, spaces around keys and values, values optionally in quotes,
//! keys in any case. Every line that is not one of those is a problem named by its line.

use crate::Problem;

/// One `key=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lowercase.
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// The entries of `text` (as `file`), and the problems of the lines that are not entries.
pub fn parse(file: &str, text: &str) -> (Vec<Entry>, Vec<Problem>) {
    let mut entries: Vec<Entry> = Vec::new();
    let mut problems = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r').trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            problems.push(Problem::at(
                file,
                line,
                None,
                format!("`{l}`"),
                "a `key=value` line, a comment starting with # or ;, or a blank line",
            ));
            continue;
        };
        let key = k.trim().to_ascii_lowercase();
        let mut value = v.trim();
        for q in ['"', '\''] {
            if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
                value = &value[1..value.len() - 1];
            }
        }
        if key.is_empty() {
            problems.push(Problem::at(
                file,
                line,
                None,
                format!("`{l}`"),
                "a key before `=`",
            ));
            continue;
        }
        if let Some(first) = entries.iter().find(|e| e.key == key) {
            problems.push(Problem::at(
                file,
                line,
                Some(&key),
                format!("a second `{key}` (the first is on line {})", first.line),
                "each key once",
            ));
            continue;
        }
        entries.push(Entry {
            key,
            value: value.trim().to_string(),
            line,
        });
    }
    (entries, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ways_people_write_it() {
        let text = "\u{feff}# comment\r\n; another\r\n\r\n  IPv6_Prefix =  2a00:fb01:400:200 \r\nverbose=\"true\"\r\ndomain = 'node.example.com'\n";
        let (e, p) = parse("config.ini", text);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            e.iter()
                .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
                .collect::<Vec<_>>(),
            [
                ("ipv6_prefix", "2a00:fb01:400:200", 4),
                ("verbose", "true", 5),
                ("domain", "node.example.com", 6)
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_with_their_number() {
        let (_, p) = parse("config.ini", "a=1\njust words\n=2\nA=3\n");
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].starts_with("config.ini:2:"), "{}", text[0]);
        assert!(text[1].starts_with("config.ini:3:"), "{}", text[1]);
        assert!(text[2].contains("line 1"), "{}", text[2]);
    }
}
