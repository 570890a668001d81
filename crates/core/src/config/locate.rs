//! Finding where a dotted key lives in the file, for `FILE:LINE:COL` messages.

use toml_edit::{ImDocument, Item};

pub struct Doc<'a> {
    text: &'a str,
    doc: ImDocument<&'a str>,
}

impl<'a> Doc<'a> {
    pub fn parse(text: &'a str) -> Result<Self, (usize, String)> {
        match ImDocument::parse(text) {
            Ok(doc) => Ok(Doc { text, doc }),
            Err(e) => {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                Err((at, e.message().trim().to_string()))
            }
        }
    }

    /// The problem at the deepest existing part of `key`: the key itself when
    /// present, else the nearest table that should hold it.
    pub fn problem(&self, key: &str, message: String) -> super::ConfigProblem {
        let (line, col) = line_col(self.text, self.offset_of(key));
        super::ConfigProblem {
            line,
            col,
            key: key.to_string(),
            message,
        }
    }

    fn offset_of(&self, key: &str) -> usize {
        let mut best = 0;
        let mut item: Option<&Item> = None;
        let mut table = Some(self.doc.as_table() as &dyn toml_edit::TableLike);
        for seg in segments(key) {
            let seg = seg.as_str();
            // `targets.1` style paths index into arrays.
            if let (Some(Item::Value(toml_edit::Value::Array(a))), Ok(i)) =
                (item, seg.parse::<usize>())
            {
                if let Some(v) = a.get(i) {
                    best = v.span().map(|s| s.start).unwrap_or(best);
                }
                break;
            }
            let Some(t) = table else { break };
            let Some((k, v)) = t.get_key_value(seg) else {
                break;
            };
            best = k
                .span()
                .or_else(|| v.span())
                .map(|s| s.start)
                .unwrap_or(best);
            item = Some(v);
            table = v.as_table_like();
        }
        best
    }
}

/// The segments of a dotted key; a segment may be a quoted TOML key
/// (`services."my.app"`), which keeps its dots.
fn segments(key: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = key.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let cur = out.last_mut().expect("never empty");
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => cur.extend(chars.next()),
            '.' if !quoted => out.push(String::new()),
            c => cur.push(c),
        }
    }
    out
}

/// `name` as one segment of a dotted key: bare when TOML allows it, else
/// quoted (so `services."my.app"` names the table the file has).
pub fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
pub fn nearest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
