//! The state file at start-up: a file too large to be one (a link to
//! `/dev/zero`) and weights outside the admin API's range stop start-up
//! with an error that says why, instead of exhausting memory or routing
//! with a weight no operator could have set (issue 17).

mod support;

use stampgate::app::App;
use support::*;

async fn start_error(state_file: &std::path::Path) -> String {
    let s = stamp("s1", "r1").await;
    let config = Setup::new()
        .stamp(&s)
        .admin(&format!("state_file = {:?}", state_file.to_str().unwrap()))
        .config();
    match App::start(&config, None).await {
        Ok(_) => panic!("started with state file {}", state_file.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn state_file_linked_to_dev_zero_is_refused_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let err = start_error(&path).await;
    assert!(
        err.contains("16 MiB") && err.contains("state.json"),
        "{err}"
    );
}

#[tokio::test]
async fn state_file_weight_out_of_range_names_stamp_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "stamps": {"s1": {"admin": "active", "weight": 5000}}}"#,
    )
    .unwrap();
    let err = start_error(&path).await;
    assert!(
        err.contains("s1") && err.contains("5000") && err.contains("0..=1000"),
        "{err}"
    );

    // The largest weight the API accepts is fine.
    std::fs::write(
        &path,
        r#"{"version": 1, "stamps": {"s1": {"admin": "active", "weight": 1000}}}"#,
    )
    .unwrap();
    let s = stamp("s1", "r1").await;
    let config = Setup::new()
        .stamp(&s)
        .admin(&format!("state_file = {:?}", path.to_str().unwrap()))
        .config();
    App::start(&config, None)
        .await
        .expect("weight 1000 is in range");
}
