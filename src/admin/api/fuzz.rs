//! Property tests of what the admin API reads from a request before any
//! command reaches the controller: the path (`route`), the query string
//! and the JSON body of every change. Whatever an operator's script sends,
//! the answer is a command in range or an `invalid` error naming the
//! field, never a panic.

use proptest::prelude::*;

use super::*;
use crate::fuzzing;

const PATH_TOKENS: &[&[u8]] = &[
    b"/",
    b"/admin",
    b"/stamps",
    b"/regions",
    b"/drain",
    b"/enable",
    b"/disable",
    b"/weight",
    b"/reload",
    b"/clear-local",
    b"/status",
    b"/events",
    b"eu-1",
    b"..",
    b"%2F",
    b"%",
    b"\xc3\xa9",
];

const QUERY_TOKENS: &[&[u8]] = &[
    b"&",
    b"=",
    b"+",
    b"%",
    b"%2",
    b"%41",
    b"%ff",
    b"deadline",
    b"dry_run",
    b"force",
    b"30s",
    b"1",
    b"0",
    b"yes",
    b"-5s",
    b"99999999999h",
];

const BODIES: &[&[u8]] = &[
    b"",
    b"{}",
    b"{\"weight\": 40}",
    b"{\"weight\": null}",
    b"{\"deadline\": \"30s\", \"dry_run\": true, \"force\": false}",
];

fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = prop::sample::select(BODIES).prop_map(<[u8]>::to_vec);
    prop_oneof![
        1 => fuzzing::syntax(fuzzing::JSON_TOKENS, 30),
        3 => fuzzing::spliced(valid, fuzzing::JSON_TOKENS, 3),
    ]
}

fn changes() -> [Change; 8] {
    [
        Change::DrainStamp("eu-1".into()),
        Change::DrainRegion("eu".into()),
        Change::EnableStamp("eu-1".into()),
        Change::EnableRegion("eu".into()),
        Change::DisableStamp("eu-1".into()),
        Change::Weight("eu-1".into()),
        Change::Reload,
        Change::ClearLocal("eu-1".into()),
    ]
}

proptest! {
    #[test]
    fn any_path_routes_or_is_refused(
        path in fuzzing::syntax(PATH_TOKENS, 8),
        post: bool,
    ) {
        let method = if post { Method::POST } else { Method::GET };
        let path = String::from_utf8_lossy(&path);
        if let Ok(Endpoint::Change(change)) = route(&method, &path) {
            prop_assert!(path.starts_with("/admin/"), "{path} changes routing");
            prop_assert!(changes().iter().any(|c| std::mem::discriminant(c) == std::mem::discriminant(&change)));
        }
    }

    #[test]
    fn any_query_and_body_make_a_command_in_range_or_name_the_field(
        query in fuzzing::syntax(QUERY_TOKENS, 8),
        body in body(),
    ) {
        let query = String::from_utf8_lossy(&query);
        let body = Bytes::from(body);
        for change in changes() {
            let made = Query::parse(Some(&query)).and_then(|q| command(change.clone(), &q, &body));
            match made {
                Ok(Command::Weight { weight, .. }) => {
                    prop_assert!(weight.is_none_or(|w| w <= 1000), "{weight:?}");
                }
                Ok(_) => {}
                Err(ApiError::Command(AdminError::Invalid { field, .. })) => {
                    prop_assert!(!field.is_empty());
                }
                Err(other) => prop_assert!(false, "{change:?}: not an invalid field: {other:?}"),
            }
        }
    }
}
