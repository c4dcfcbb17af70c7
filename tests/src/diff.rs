//! A unified line diff for failure messages, so a mismatch between two
//! transcripts shows where they part instead of two walls of text.

/// Lines of `a` and `b` in unified-diff form with `context` lines around each
/// change; empty when they are equal.
pub fn unified(a_name: &str, a: &str, b_name: &str, b: &str, context: usize) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let ops = edit_script(&a, &b);
    if ops.iter().all(|op| matches!(op, Op::Same(..))) {
        return String::new();
    }
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    // Indices of ops that are changes; a hunk spans changes closer than
    // 2 * context apart, plus context on either side.
    let changes: Vec<usize> = (0..ops.len())
        .filter(|&i| !matches!(ops[i], Op::Same(..)))
        .collect();
    let mut start = 0;
    while start < changes.len() {
        let mut end = start;
        while end + 1 < changes.len() && changes[end + 1] - changes[end] <= 2 * context + 1 {
            end += 1;
        }
        let from = changes[start].saturating_sub(context);
        let to = (changes[end] + context + 1).min(ops.len());
        let (a_line, b_line) = ops[from].positions();
        out.push_str(&format!("@@ -{} +{} @@\n", a_line + 1, b_line + 1));
        for op in &ops[from..to] {
            match op {
                Op::Same(i, _) => out.push_str(&format!(" {}\n", a[*i])),
                Op::Delete(i, _) => out.push_str(&format!("-{}\n", a[*i])),
                Op::Insert(_, j) => out.push_str(&format!("+{}\n", b[*j])),
            }
        }
        start = end + 1;
    }
    out
}

/// Each op carries its position in `a` and in `b`.
enum Op {
    Same(usize, usize),
    Delete(usize, usize),
    Insert(usize, usize),
}

impl Op {
    fn positions(&self) -> (usize, usize) {
        match *self {
            Op::Same(i, j) | Op::Delete(i, j) | Op::Insert(i, j) => (i, j),
        }
    }
}

/// Longest-common-subsequence edit script; quadratic, fine for transcripts
/// of a few thousand lines.
fn edit_script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j] = length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut ops = Vec::with_capacity(n + m);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push(Op::Same(i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Deletions first, as diff(1) shows them.
            ops.push(Op::Delete(i, j));
            i += 1;
        } else {
            ops.push(Op::Insert(i, j));
            j += 1;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a", "x\ny\n", "b", "x\ny\n", 3), "");
    }

    #[test]
    fn a_changed_line_shows_as_delete_then_insert_with_context() {
        let diff = unified(
            "a",
            "1\n2\n3\n4\n5\n6\n7\n",
            "b",
            "1\n2\n3\nfour\n5\n6\n7\n",
            1,
        );
        assert_eq!(diff, "--- a\n+++ b\n@@ -3 +3 @@\n 3\n-4\n+four\n 5\n");
    }
}
