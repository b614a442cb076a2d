//! The official Feishu Python SDK (lark-oapi) as a client of the emulator:
//! what the real service accepts from the SDK, the emulator must accept too,
//! and answer in the form the SDK reads. scripts/need-sdk.sh installs it.

use std::process::{Command, Stdio};

use facefs::api::{codes, IdKind};
use facefs::emulator::tenant::TenantSpec;
use facefs::emulator::{Emulator, EmulatorConfig, Route};
use serde_json::Value;

const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sdk-venv/bin/python");
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/official_sdk.py");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[cfg_attr(
    not(facefs_sdk),
    ignore = "needs the official SDK (scripts/need-sdk.sh; scripts/test.sh runs it)"
)]
fn the_official_sdk_lists_gets_and_downloads_from_the_emulator() {
    let emu = Emulator::start(EmulatorConfig {
        tenant: TenantSpec {
            users: 17,
            ..TenantSpec::default()
        },
        ..EmulatorConfig::default()
    })
    .unwrap();
    // The faces as served before the script's upload changes one.
    let served: std::collections::HashMap<(String, bool), Option<Vec<u8>>> = emu
        .tenant()
        .users()
        .iter()
        .flat_map(|u| [false, true].map(|c| (u.id(IdKind::OpenId).to_owned(), c)))
        .map(|(id, c)| {
            let face = emu.face(IdKind::OpenId, &id, c);
            ((id, c), face)
        })
        .collect();
    let upload = facefs::emulator::face_image::face_jpeg(4242, 64, 80);
    let upload_file =
        std::env::temp_dir().join(format!("facefs-sdk-upload-{}.jpg", std::process::id()));
    std::fs::write(&upload_file, &upload).unwrap();
    let output = Command::new(PYTHON)
        .arg(SCRIPT)
        .env("FACEFS_UPLOAD", &upload_file)
        .env("FACEFS_EMULATOR", emu.base_url())
        .env("FEISHU_APP_ID", &emu.config().app_id)
        .env("FEISHU_APP_SECRET", &emu.config().app_secret)
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK script");
    let _ = std::fs::remove_file(&upload_file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();

    let users = emu.tenant().users();
    for kind in IdKind::ALL {
        let listed: Vec<(String, bool)> = result["lists"][kind.as_str()]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (u[0].as_str().unwrap().to_owned(), u[1].as_bool().unwrap()))
            .collect();
        let expected: Vec<(String, bool)> = users
            .iter()
            .map(|u| (u.id(kind).to_owned(), u.has_face))
            .collect();
        assert_eq!(listed, expected, "{kind}");
        // 17 users at 7 a page.
        assert_eq!(result["pages"][kind.as_str()], 3, "{kind}");
    }

    let faces = result["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2 * 2 + 2);
    for face in faces {
        let id = face[0].as_str().unwrap();
        let cropped = face[1].as_bool().unwrap();
        let answer = &face[2];
        match served.get(&(id.to_owned(), cropped)).cloned().flatten() {
            Some(bytes) => {
                assert_eq!(answer["code"], 0, "{id} {cropped}");
                assert_eq!(
                    answer["hex"].as_str().unwrap(),
                    hex(&bytes),
                    "{id} {cropped}"
                );
            }
            None => {
                let code = if emu.tenant().find(IdKind::OpenId, id).is_some() {
                    codes::FACE_NOT_FOUND
                } else {
                    codes::USER_NOT_FOUND
                };
                assert_eq!(answer["code"], code, "{id}");
            }
        }
    }
    // The cropped requests came as the SDK spells booleans.
    let cropped_queries: Vec<String> = emu
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Face && r.query.contains("is_cropped=True"))
        .map(|r| r.query)
        .collect();
    assert_eq!(cropped_queries.len(), 2, "{cropped_queries:?}");

    let first = &result["users"][0];
    assert_eq!(first[1], 0);
    assert_eq!(first[2], first[0]);
    assert_eq!(first[3], true);
    assert_eq!(result["users"][1][1], codes::USER_NOT_FOUND);
    assert_eq!(emu.count(Route::Token), 1, "the SDK's token was cached");

    // The SDK's multipart upload is what the emulator's strict reading takes.
    let uploaded = &result["upload"];
    assert_eq!(uploaded[1], 0, "{uploaded}");
    let id = uploaded[0].as_str().unwrap();
    assert_eq!(emu.face(IdKind::OpenId, id, false).unwrap(), upload);
}
