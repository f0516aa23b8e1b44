//! Linking a record to its counterpart when no external id links them yet:
//! match rules on configured fields, `exact` (normalized equality) or `fuzzy`
//! (Jaro-Winkler similarity over normalized text with a threshold). A single
//! clear candidate links; several, or one that is close but under the
//! threshold, goes to review — never a guess.

use serde_json::{Map, Value};

use crate::config::{MatchMode, Matching};

/// How close "close but under the threshold" is: such a candidate is
/// ambiguous and goes to review.
pub const REVIEW_MARGIN: f64 = 0.1;

/// The result of matching one record against candidates.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchResult {
    /// Exactly one candidate matches.
    Linked(String),
    /// Several or uncertain candidates: a person decides.
    Ambiguous(Vec<(String, f64)>),
    NoMatch,
}

/// Lowercased, trimmed, inner whitespace collapsed, punctuation removed
/// (an email keeps its `@` and dots).
pub fn normalize(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let email = s.contains('@');
    let cleaned: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || (email && (c == '@' || c == '.')) {
                c
            } else {
                ' '
            }
        })
        .collect();
    let out = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    (!out.is_empty()).then_some(out)
}

/// Matches `wanted` (normalized values of the match fields, in order) against
/// candidates `(id, values)`.
pub fn best_match(
    rule: &Matching,
    wanted: &[Option<String>],
    candidates: &[(String, Vec<Option<String>>)],
) -> MatchResult {
    if wanted.iter().all(Option::is_none) {
        return MatchResult::NoMatch;
    }
    let mut scored: Vec<(String, f64)> = candidates
        .iter()
        .map(|(id, vals)| (id.clone(), score(rule.mode, wanted, vals)))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    let threshold = match rule.mode {
        MatchMode::Exact => 1.0,
        MatchMode::Fuzzy => rule.threshold,
    };
    let above: Vec<_> = scored
        .iter()
        .filter(|(_, s)| *s >= threshold)
        .cloned()
        .collect();
    match above.len() {
        1 => MatchResult::Linked(above[0].0.clone()),
        0 => {
            let near: Vec<_> = scored
                .into_iter()
                .filter(|(_, s)| rule.mode == MatchMode::Fuzzy && *s >= threshold - REVIEW_MARGIN)
                .collect();
            if near.is_empty() {
                MatchResult::NoMatch
            } else {
                MatchResult::Ambiguous(near)
            }
        }
        _ => MatchResult::Ambiguous(above),
    }
}

/// Similarity over all match fields (the lowest field score); a missing
/// value on either side scores 0.
fn score(mode: MatchMode, wanted: &[Option<String>], have: &[Option<String>]) -> f64 {
    wanted
        .iter()
        .zip(have)
        .map(|(w, h)| match (w, h) {
            (Some(w), Some(h)) => match mode {
                MatchMode::Exact => f64::from(u8::from(w == h)),
                MatchMode::Fuzzy => strsim::jaro_winkler(w, h),
            },
            _ => 0.0,
        })
        .fold(1.0, f64::min)
}

/// The normalized values of `paths` in `fields`.
pub fn values_of<'a>(
    fields: &Map<String, Value>,
    paths: impl Iterator<Item = &'a crate::config::FieldPath>,
) -> Vec<Option<String>> {
    paths
        .map(|p| super::record::get(fields, p).and_then(normalize))
        .collect()
}

/// The normalized values an external record holds for the rule's billing
/// paths, read from the external fields they are mapped to.
pub fn external_values_of(
    entity: &super::mapping::EntityMap,
    rule: &Matching,
    fields: &Map<String, Value>,
) -> Vec<Option<String>> {
    rule.fields
        .iter()
        .map(|p| {
            entity
                .fields
                .iter()
                .find(|f| &f.alguna == p)
                .and_then(|f| super::record::get(fields, &f.external))
                .and_then(normalize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(mode: MatchMode, threshold: f64) -> Matching {
        Matching {
            fields: vec!["name".parse().unwrap()],
            mode,
            threshold,
            create_if_not_found: true,
        }
    }

    fn cands(names: &[(&str, &str)]) -> Vec<(String, Vec<Option<String>>)> {
        names
            .iter()
            .map(|(id, n)| (id.to_string(), vec![normalize(&json!(n))]))
            .collect()
    }

    #[test]
    fn exact_matches_after_normalization() {
        let r = rule(MatchMode::Exact, 0.9);
        let c = cands(&[("1", "ACME  Corp."), ("2", "Globex")]);
        assert_eq!(
            best_match(&r, &[normalize(&json!("acme corp"))], &c),
            MatchResult::Linked("1".into())
        );
        assert_eq!(
            best_match(&r, &[normalize(&json!("Initech"))], &c),
            MatchResult::NoMatch
        );
        let dup = cands(&[("1", "Acme"), ("2", "acme")]);
        assert!(
            matches!(best_match(&r, &[normalize(&json!("ACME"))], &dup), MatchResult::Ambiguous(v) if v.len() == 2)
        );
    }

    #[test]
    fn fuzzy_links_clear_matches_and_sends_doubtful_ones_to_review() {
        let r = rule(MatchMode::Fuzzy, 0.92);
        let c = cands(&[("1", "Acme Corporation"), ("2", "Globex Industries")]);
        assert_eq!(
            best_match(&r, &[normalize(&json!("Acme Corporaton"))], &c),
            MatchResult::Linked("1".into())
        );
        // Close to two candidates: ambiguous.
        let twins = cands(&[("1", "Acme Corp East"), ("2", "Acme Corp West")]);
        assert!(matches!(
            best_match(&r, &[normalize(&json!("Acme Corp"))], &twins),
            MatchResult::Ambiguous(_)
        ));
        // Unrelated: no match, so create-if-not-found may create.
        assert_eq!(
            best_match(&r, &[normalize(&json!("Zebra Labs"))], &c),
            MatchResult::NoMatch
        );
    }
}
