//! Which instances a question is about: named hosts (exact names or globs
//! with `*` and `?`), or every host when none is named.

use super::QueryError;
use crate::store::InstanceRecord;

/// The instances whose host matches one of `hosts` (all when empty),
/// ordered by host then instance. A pattern that matches nothing is an
/// error naming the hosts there are.
pub fn resolve(
    mut all: Vec<InstanceRecord>,
    hosts: &[String],
) -> Result<Vec<InstanceRecord>, QueryError> {
    all.sort_by(|a, b| (&a.host, &a.instance).cmp(&(&b.host, &b.instance)));
    if hosts.is_empty() {
        return Ok(all);
    }
    for pattern in hosts {
        if !all.iter().any(|r| glob(pattern, &r.host)) {
            let mut known: Vec<&str> = all.iter().map(|r| r.host.as_str()).collect();
            known.dedup();
            return Err(QueryError::UnknownHost {
                host: pattern.clone(),
                known: if known.is_empty() {
                    "none yet".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    all.retain(|r| hosts.iter().any(|p| glob(p, &r.host)));
    Ok(all)
}

/// Shell-style matching of `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, instance: &str) -> InstanceRecord {
        InstanceRecord {
            host: host.into(),
            instance: instance.into(),
            ..Default::default()
        }
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("db-*", "db-1"));
        assert!(glob("db-?", "db-1"));
        assert!(!glob("db-?", "db-12"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b", "aXc"));
        assert!(glob("exact", "exact"));
    }

    #[test]
    fn every_host_when_none_named_sorted() {
        let all = vec![rec("b", "1"), rec("a", "2"), rec("a", "1")];
        let got: Vec<_> = resolve(all, &[])
            .unwrap()
            .into_iter()
            .map(|r| (r.host, r.instance))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("b".into(), "1".into())
            ]
        );
    }

    #[test]
    fn an_unknown_host_names_the_known_ones() {
        let err = resolve(vec![rec("db-1", "5432")], &["db-9".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no instance on host \"db-9\" is known; known hosts: db-1"
        );
    }
}
