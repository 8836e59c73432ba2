//! The command line as an operator uses it: `tenant add`, `events push`, `events tail`.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{scim_event, TestEnv};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::Value;

fn cli(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_enablement"));
    cmd.arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .args(args)
        .envs(env.service_env("127.0.0.1:1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("cli output")
}

/// `events tail --topic scim --from-beginning --exit` of a tenant, parsed.
fn tail_inbound(env: &TestEnv, t: &enablement::actors::TenantId) -> Vec<Value> {
    let out = cli(
        env,
        &[
            "events",
            "tail",
            "--tenant",
            t.as_str(),
            "--topic",
            "scim",
            "--from-beginning",
            "--exit",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_add_creates_topics_prints_the_token_once_and_refuses_duplicates() {
    let env = TestEnv::new().await;
    let id = common::unique("cli");
    let out = cli(&env, &["tenant", "add", &id, "--name", "CLI Org"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("ent_"), "{token}");
    let stored: Vec<u8> = env
        .owner
        .query_one(
            "select api_token_sha256 from tenant_secrets where tenant_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, enablement::tokens::hash(&token).to_vec());

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.config.kafka.brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    for suffix in ["scim", "user_changed", "events", "scim.dlq"] {
        let topic = format!("tenant.{id}.{suffix}");
        assert!(names.contains(&topic.as_str()), "{topic} missing");
    }

    // A second add fails and changes nothing.
    let again = cli(&env, &["tenant", "add", &id, "--name", "Other Name"], None);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(again.stdout.is_empty(), "no token printed");
    let row = env
        .owner
        .query_one(
            "select t.display_name, s.api_token_sha256 from tenants t join tenant_secrets s using (tenant_id) where tenant_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "CLI Org");
    assert_eq!(row.get::<_, Vec<u8>>(1), stored);

    for bad in ["a*", "UPPER", "a.b", "a_b"] {
        let out = cli(&env, &["tenant", "add", bad, "--name", "x"], None);
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("invalid tenant id"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_push_and_tail_round_trip_through_the_broker() {
    let env = TestEnv::new().await;
    let t = common::tenant("cli");
    env.add_tenant(&t).await;
    let lines = [
        scim_event(t.as_str(), "e1", "CREATE", "u1", 1, "a@x.test"),
        "not json at all".to_string(),
    ];
    let out = cli(
        &env,
        &["events", "push", "--tenant", t.as_str()],
        Some(&lines.join("\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = tail_inbound(&env, &t);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["key"], "u1");
    assert_eq!(recs[0]["payload"]["eventId"], "e1");
    assert_eq!(recs[1]["payload"], "not json at all");
    let out = cli(
        &env,
        &[
            "events",
            "tail",
            "--tenant",
            t.as_str(),
            "--topic",
            "nope",
            "--exit",
        ],
        None,
    );
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_added_with_shared_topics_is_pushed_and_tailed_on_its_shared_partition() {
    let mut env = TestEnv::new().await;
    // Shared topics of its own: no other test's records on them.
    env.config.kafka.topic_prefix = format!("{}.", common::unique("cli"));
    env.config.kafka.shared_topic_partitions = 4;
    let (t, other) = (common::tenant("shcli"), common::tenant("shother"));
    for id in [&t, &other] {
        let out = cli(
            &env,
            &[
                "tenant",
                "add",
                id.as_str(),
                "--name",
                "Small",
                "--shared-topics",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(said.contains("shared.scim"), "{said}");
    }
    for (id, n) in [(&t, 2), (&other, 1)] {
        let lines: Vec<String> = (0..n)
            .map(|i| scim_event(id.as_str(), &format!("e{i}"), "CREATE", "u1", 1, "a@x.test"))
            .collect();
        let out = cli(
            &env,
            &["events", "push", "--tenant", id.as_str()],
            Some(&lines.join("\n")),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        let partition = id.shared_partition(4);
        assert!(
            said.contains(&format!("shared.scim partition {partition}")),
            "{said}"
        );
    }
    let recs = tail_inbound(&env, &t);
    // Keyed by the tenant id; the other shared tenant's record is not shown.
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r["key"] == t.as_str()));
    let listed = cli(&env, &["tenant", "list"], None);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let row: Value = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["tenant_id"] == t.as_str())
        .expect("listed");
    assert_eq!(row["shared_topics"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_added_from_a_csv_file_are_checked_whole_then_registered() {
    let env = TestEnv::new().await;
    let ids: Vec<String> = (0..3).map(|i| common::unique(&format!("csv{i}"))).collect();
    // A bad line anywhere: nothing is registered, the line is named, exit code 2.
    let bad = format!("tenant_id,display_name\n{},One\nNot*Valid,Two\n", ids[0]);
    let out = cli(&env, &["tenant", "add", "--from-csv", "-"], Some(&bad));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(said.contains("line 3"), "{said}");
    assert!(!said.contains("Not*Valid"), "{said}");
    let listed = cli(&env, &["tenant", "list"], None);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&ids[0]));

    let good: String = ids.iter().map(|id| format!("{id},Org {id}\n")).collect();
    let out = cli(&env, &["tenant", "add", "--from-csv", "-"], Some(&good));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(',').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    assert_eq!(
        tokens.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
        ids,
        "one token per tenant, in file order"
    );
    // The progress bar, one line per chunk when stderr is not a terminal: empty, then full.
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains(&format!("[{}] 0/3 tenants registered", "-".repeat(30))),
        "{said}"
    );
    assert!(
        said.contains(&format!("[{}] 3/3 tenants registered", "#".repeat(30))),
        "{said}"
    );
    let listed = String::from_utf8_lossy(&cli(&env, &["tenant", "list"], None).stdout).into_owned();
    for id in &ids {
        assert!(listed.contains(&format!("Org {id}")), "{listed}");
    }
    // Registering the same file again changes nothing and says which tenant exists.
    let out = cli(&env, &["tenant", "add", "--from-csv", "-"], Some(&good));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
