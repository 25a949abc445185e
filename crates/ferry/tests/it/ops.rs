//! Operations (issue 13): setup from each side's `info` output with no key pasted by hand, the blank mapping of
//! `connector init`, and the checks `serve` makes before starting.

use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::procs::{Node, edit_toml, ferry, ferry_output};

/// Free ports of 127.0.0.1, chosen up front: each side's `info` names its addresses before its server starts.
fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn setup_from_info_files_with_no_hand_edited_keys() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let ports = free_ports(4);
    let (app_cfg, comms_cfg) = (dir.join("app/app.toml"), dir.join("comms/comms.toml"));
    std::fs::create_dir_all(dir.join("app")).unwrap();
    std::fs::create_dir_all(dir.join("comms")).unwrap();

    // App first: its defaults, on ports of this test (addresses are the operator's choice; no key is edited)
    ferry(&["app", "init", "--config", &s(&app_cfg)]);
    edit_toml(&app_cfg, |t| {
        t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[0]).into());
        t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[1]).into());
        t.insert("plan_after_import".into(), false.into());
    });
    // an App with no Comms server refuses to start, naming the command that fills the section
    let out = ferry_output(&["app", "serve", "--config", &s(&app_cfg)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--comms-info"), "{err}");

    let app_info = ferry(&["app", "info", "--config", &s(&app_cfg)]);
    let app_info_file = dir.join("app-info.toml");
    std::fs::write(&app_info_file, &app_info).unwrap();
    assert!(app_info.contains("[app]") && app_info.contains("service_key = "), "{app_info}");

    // Comms: a new comms.toml with [app] filled from the App's info
    let out = ferry(&["comms", "init", "--config", &s(&comms_cfg), "--app-info", &s(&app_info_file)]);
    assert!(out.contains("wrote"), "{out}");
    edit_toml(&comms_cfg, |t| {
        t.insert("listen_https".into(), format!("127.0.0.1:{}", ports[2]).into());
        t.insert("listen_ssh".into(), format!("127.0.0.1:{}", ports[2]).into());
        t.insert("listen_admin".into(), format!("127.0.0.1:{}", ports[3]).into());
    });
    let written: toml::Table = toml::from_str(&std::fs::read_to_string(&comms_cfg).unwrap()).unwrap();
    let app_section: toml::Table = toml::from_str(&app_info).unwrap();
    assert_eq!(written["app"], app_section["app"], "the [app] section is the App's info");

    // a comms.toml without [app] refuses to serve, naming the command
    let bare = dir.join("comms/bare.toml");
    ferry(&["comms", "init", "--config", &s(&bare)]);
    let out = ferry_output(&["comms", "serve", "--config", &s(&bare)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--app-info"), "{err}");

    // the App's existing app.toml gets [comms] and comms_keys from the Comms server's info; the rest is kept
    let comms_info = ferry(&["comms", "info", "--config", &s(&comms_cfg)]);
    let comms_info_file = dir.join("comms-info.toml");
    std::fs::write(&comms_info_file, &comms_info).unwrap();
    let out = ferry(&["app", "init", "--config", &s(&app_cfg), "--comms-info", &s(&comms_info_file)]);
    assert!(out.contains("updated"), "{out}");
    // twice is harmless: the key is not added again
    ferry(&["app", "init", "--config", &s(&app_cfg), "--comms-info", &s(&comms_info_file)]);
    let app_t: toml::Table = toml::from_str(&std::fs::read_to_string(&app_cfg).unwrap()).unwrap();
    assert_eq!(app_t["comms_keys"].as_array().unwrap().len(), 1);
    assert_eq!(app_t["listen_https"].as_str().unwrap(), format!("127.0.0.1:{}", ports[0]));
    assert_eq!(app_t["comms"]["api_url"].as_str().unwrap(), format!("https://127.0.0.1:{}", ports[2]));

    // both serve, and work together: tenant add (Comms -> App) and an announced file (App -> Comms)
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut comms = Node::new("comms", &["comms", "serve", "--config", &s(&comms_cfg)], &logs);
    comms.start();
    comms.logged_addr("comms server listening", "https_addr", Duration::from_secs(30));
    let mut app = Node::new("app", &["app", "serve", "--config", &s(&app_cfg)], &logs);
    app.start();
    app.logged_addr("app server listening", "https_addr", Duration::from_secs(30));
    let added = ferry(&["comms", "tenant", "add", "acme", "--config", &s(&comms_cfg)]);
    assert!(added.contains("ferry1."), "{added}");
    let report = dir.join("report.txt");
    std::fs::write(&report, "hello\n").unwrap();
    let out = ferry(&["app", "publish", "acme", &s(&report), "--config", &s(&app_cfg)]);
    assert!(out.contains("1 file(s) announced"), "{out}");
    let files = ferry(&["comms", "tenant", "files", "acme", "--config", &s(&comms_cfg)]);
    assert!(files.contains("report.txt"), "{files}");
}

#[test]
fn connector_init_writes_a_blank_mapping_and_the_sample_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank");
    let out =
        ferry(&["connector", "init", "--dir", &s(&blank), "--erp-kind", "postgres", "--erp", "postgres://erp@db/erp"]);
    assert!(out.contains("fill in mapping.toml"), "{out}");
    let text = std::fs::read_to_string(blank.join("mapping.toml")).unwrap();
    let m: ferry_connector::mapping::Mapping = toml::from_str(&text).unwrap();
    assert!(m.files.is_empty(), "every block is commented out");
    for f in ferry_proto::spec::STANDARD_FILES {
        assert!(text.contains(&format!("[files.\"{}\"]", f.name)), "{} is listed", f.name);
    }
    assert!(!text.contains("FROM warehouses"), "not the sample's mapping");
    // `check` says what to do first
    let out = ferry_output(&["connector", "check", "--config", &s(&blank.join("connector.toml"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("location.csv"), "{err}");

    let sample = dir.path().join("sample");
    ferry(&["connector", "init", "--dir", &s(&sample), "--sample"]);
    let text = std::fs::read_to_string(sample.join("mapping.toml")).unwrap();
    assert_eq!(text, ferry_sample::MAPPING);
}
