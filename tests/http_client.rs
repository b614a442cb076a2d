//! The real HTTP client against the emulator: pagination, encoding of odd
//! ids, error codes, token renewal and the emulator's strictness.

use std::time::{Duration, Instant};

use facefs::api::http::{parse_base_url, HttpApi, HttpConfig};
use facefs::api::secret::Secret;
use facefs::api::IdKind;
use facefs::api::{codes, ApiError, FaceApi, Priority};
use facefs::emulator::tenant::{TenantSpec, ODD_USER_IDS};
use facefs::emulator::{Emulator, EmulatorConfig, Route, WireFault};
use facefs::sync::byte_budget::ByteBudget;

fn emulator(users: usize) -> Emulator {
    let tenant = TenantSpec {
        users,
        face_width: 48,
        face_height: 60,
        ..TenantSpec::default()
    };
    Emulator::start(EmulatorConfig {
        tenant,
        ..EmulatorConfig::default()
    })
    .unwrap()
}

fn client_with(emu: &Emulator, secret: &str) -> HttpApi {
    HttpApi::new(HttpConfig {
        base_url: parse_base_url(&emu.base_url()).unwrap(),
        app_id: emu.config().app_id.clone(),
        app_secret: Secret::new(secret),
        request_timeout: Duration::from_secs(10),
        memory: ByteBudget::new(64 << 20),
    })
    .unwrap()
}

fn client(emu: &Emulator) -> HttpApi {
    client_with(emu, &emu.config().app_secret.clone())
}

fn list_all(api: &HttpApi, kind: IdKind) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = api.list_users(kind, token.as_deref()).unwrap();
        ids.extend(
            page.users
                .into_iter()
                .filter(|u| u.face_uploaded)
                .map(|u| u.user_id),
        );
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => return ids,
        }
    }
}

#[test]
fn lists_every_user_across_pages() {
    let emu = emulator(120);
    let api = client(&emu);
    for kind in IdKind::ALL {
        assert_eq!(list_all(&api, kind), emu.ids_with_faces(kind));
    }
    assert_eq!(
        emu.count(Route::ListUsers),
        3 * 3,
        "120 users are three pages of at most 50"
    );
    assert!(emu
        .requests()
        .iter()
        .filter(|r| r.route == Route::ListUsers)
        .all(|r| r.query.contains("page_size=50")));
    assert_eq!(emu.count(Route::Token), 1, "one token serves every request");
}

#[test]
fn odd_user_ids_reach_the_face_endpoint_as_one_segment() {
    let emu = emulator(10);
    let api = client(&emu);
    for id in ODD_USER_IDS {
        for cropped in [false, true] {
            let face = api
                .get_face(IdKind::UserId, id, cropped, Priority::Listed)
                .unwrap()
                .bytes;
            assert_eq!(Some(face), emu.face(IdKind::UserId, id, cropped), "{id:?}");
        }
    }
    let faces: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Face)
        .collect();
    assert_eq!(faces.len(), ODD_USER_IDS.len() * 2);
    for (request, id) in faces
        .iter()
        .zip(ODD_USER_IDS.iter().flat_map(|id| [id, id]))
    {
        assert_eq!(request.user_id.as_deref(), Some(*id));
        assert!(
            request.query.starts_with("is_cropped="),
            "{}",
            request.query
        );
        assert!(
            request.query.ends_with("&user_id_type=user_id"),
            "{}",
            request.query
        );
    }
}

#[test]
fn not_found_answers_are_distinct() {
    let emu = emulator(20);
    let api = client(&emu);
    assert_eq!(
        api.get_face(IdKind::OpenId, "ou_nobody", false, Priority::Listed),
        Err(ApiError::UserNotFound)
    );
    let faceless = emu.ids_without_faces(IdKind::OpenId)[0].clone();
    assert_eq!(
        api.get_face(IdKind::OpenId, &faceless, true, Priority::Listed),
        Err(ApiError::FaceNotFound)
    );
}

#[test]
fn a_wrong_secret_is_refused_with_code_and_log_id() {
    let emu = emulator(1);
    let api = client_with(&emu, "not-the-secret");
    match api.check_credentials() {
        Err(ApiError::BadCredentials(failure)) => {
            assert_eq!(failure.code, Some(codes::APP_SECRET_INVALID));
            assert!(failure
                .log_id
                .is_some_and(|id| id.starts_with("2026emulator")));
        }
        other => panic!("expected BadCredentials, got {other:?}"),
    }
}

#[test]
fn an_expired_token_is_renewed_and_the_request_retried() {
    let emu = emulator(3);
    let api = client(&emu);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    api.get_face(IdKind::OpenId, &id, false, Priority::Listed)
        .unwrap();
    emu.expire_tokens();
    assert_eq!(
        api.get_face(IdKind::OpenId, &id, false, Priority::Listed)
            .unwrap()
            .bytes,
        emu.face(IdKind::OpenId, &id, false).unwrap()
    );
    assert_eq!(emu.count(Route::Token), 2);
    assert_eq!(
        emu.count(Route::Face),
        3,
        "one refused with 99991663, one retried"
    );
}

#[test]
fn a_missing_scope_is_permission_denied() {
    let tenant = TenantSpec {
        users: 2,
        ..TenantSpec::default()
    };
    let emu = Emulator::start(EmulatorConfig {
        tenant,
        deny_user_id_scope: true,
        ..EmulatorConfig::default()
    })
    .unwrap();
    let api = client(&emu);
    match api.list_users(IdKind::UserId, None) {
        Err(ApiError::PermissionDenied(f)) => {
            assert_eq!(f.code, Some(codes::SCOPE_MISSING));
            assert!(f.msg.contains("contact:user.employee_id:readonly"));
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(api.list_users(IdKind::OpenId, None).is_ok());
}

#[test]
fn the_emulator_is_strict() {
    let emu = emulator(3);
    let http = reqwest::blocking::Client::new();
    let call = |path: &str, token: Option<&str>| -> (u16, i64) {
        let mut req = http.get(format!("{}{path}", emu.base_url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let body: serde_json::Value = serde_json::from_slice(&resp.bytes().unwrap()).unwrap();
        (status, body["code"].as_i64().unwrap())
    };
    assert_eq!(
        call("/open-apis/acs/v1/users?page_size=10", None),
        (400, codes::TOKEN_MISSING)
    );
    assert_eq!(
        call("/open-apis/acs/v1/users?page_size=10", Some("t-forged")),
        (400, codes::TOKEN_INVALID)
    );
    let answer = http
        .post(format!("{}/open-apis/auth/v3/tenant_access_token/internal", emu.base_url()))
        .body(serde_json::json!({ "app_id": emu.config().app_id, "app_secret": emu.config().app_secret }).to_string())
        .send()
        .unwrap();
    let token: serde_json::Value = serde_json::from_slice(&answer.bytes().unwrap()).unwrap();
    let token = token["tenant_access_token"].as_str().unwrap();
    assert_eq!(
        call("/open-apis/acs/v1/users?page_size=51", Some(token)),
        (400, codes::INVALID_PARAM)
    );
    assert_eq!(
        call(
            "/open-apis/acs/v1/users?page_size=10&user_id_type=email",
            Some(token)
        ),
        (400, codes::INVALID_PARAM)
    );
    assert_eq!(
        call(
            "/open-apis/acs/v1/users?page_size=1&page_token=bogus",
            Some(token)
        ),
        (400, codes::INVALID_PAGE_TOKEN)
    );
    assert_eq!(
        call("/open-apis/acs/v1/users?page_size=1", Some(token)),
        (200, 0)
    );
    assert_eq!(
        call("/open-apis/acs/v2/nothing", Some(token)),
        (404, codes::NO_SUCH_PATH)
    );
}

fn client_timing_out_after(emu: &Emulator, request_timeout: Duration) -> HttpApi {
    HttpApi::new(HttpConfig {
        base_url: parse_base_url(&emu.base_url()).unwrap(),
        app_id: emu.config().app_id.clone(),
        app_secret: Secret::new(emu.config().app_secret.clone()),
        request_timeout,
        memory: ByteBudget::new(64 << 20),
    })
    .unwrap()
}

/// A body trickled one byte per 100 ms (the generated faces are kilobytes)
/// must end at --request-timeout, not when the last byte arrives.
#[test]
fn request_timeout_bounds_the_whole_body() {
    let emu = emulator(3);
    let api = client_timing_out_after(&emu, Duration::from_secs(1));
    api.check_credentials().unwrap();
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    emu.inject(Route::Face, WireFault::Trickle, 1.0);
    let start = Instant::now();
    let result = api.get_face(IdKind::OpenId, &id, false, Priority::Listed);
    let took = start.elapsed();
    assert!(matches!(result, Err(ApiError::Transient(_))), "{result:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// A trickled token answer holds the renewal; a request waiting for it ends
/// at its own deadline, and so does the renewal itself.
#[test]
fn a_slow_token_renewal_holds_no_one_past_their_deadline() {
    let emu = emulator(3);
    let api = std::sync::Arc::new(client_timing_out_after(&emu, Duration::from_secs(1)));
    emu.inject(Route::Token, WireFault::Trickle, 1.0);
    let id = emu.ids_with_faces(IdKind::OpenId)[0].clone();
    let start = Instant::now();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (api, id) = (api.clone(), id.clone());
            std::thread::spawn(move || {
                api.get_face(IdKind::OpenId, &id, false, Priority::Listed)
                    .map(drop)
            })
        })
        .collect();
    for reader in readers {
        assert!(matches!(
            reader.join().unwrap(),
            Err(ApiError::Transient(_))
        ));
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    emu.clear_faults();
    assert!(
        api.get_face(IdKind::OpenId, &id, false, Priority::Listed)
            .is_ok(),
        "recovers"
    );
}

/// Uploads as the emulator reads them (the documented parts, strictly):
/// the face is served after, for every id kind, with a crop of its own;
/// refusals keep their codes.
#[test]
fn uploads_replace_the_face() {
    use facefs::api::ImageType;
    use facefs::emulator::face_image::face_jpeg;
    let emu = emulator(16);
    let api = client(&emu);
    let new_face = face_jpeg(99, 64, 80);
    for (i, kind) in IdKind::ALL.into_iter().enumerate() {
        let id = emu.ids_with_faces(kind)[i].clone();
        api.put_face(kind, &id, &new_face, ImageType::Jpeg).unwrap();
        assert_eq!(emu.face(kind, &id, false).unwrap(), new_face);
        let crop = api.get_face(kind, &id, true, Priority::Listed).unwrap();
        assert_ne!(crop.bytes, new_face, "the crop is made by the service");
        assert_eq!(
            api.get_face(kind, &id, false, Priority::Listed)
                .unwrap()
                .bytes,
            new_face
        );
    }
    // A user without a face gets one.
    let faceless = emu.ids_without_faces(IdKind::OpenId)[0].clone();
    api.put_face(IdKind::OpenId, &faceless, &new_face, ImageType::Jpeg)
        .unwrap();
    assert!(emu.ids_with_faces(IdKind::OpenId).contains(&faceless));

    let id = emu.ids_with_faces(IdKind::OpenId)[5].clone();
    let before = emu.face(IdKind::OpenId, &id, false).unwrap();
    assert_eq!(
        api.put_face(IdKind::OpenId, "ou_nobody", &new_face, ImageType::Jpeg),
        Err(ApiError::UserNotFound)
    );
    // The declared type must be the bytes' type.
    let err = api
        .put_face(IdKind::OpenId, &id, &new_face, ImageType::Png)
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::Failed(f) if f.code == Some(codes::INVALID_PARAM)),
        "{err:?}"
    );
    let err = api
        .put_face(
            IdKind::OpenId,
            &id,
            b"\xff\xd8\xffnot really",
            ImageType::Jpeg,
        )
        .unwrap_err();
    assert!(matches!(err, ApiError::ImageRefused(_)), "{err:?}");
    emu.set_upload_refusal(Some(codes::SCOPE_MISSING));
    let err = api
        .put_face(IdKind::OpenId, &id, &new_face, ImageType::Jpeg)
        .unwrap_err();
    assert!(matches!(err, ApiError::PermissionDenied(_)), "{err:?}");
    emu.set_upload_refusal(None);
    assert_eq!(emu.face(IdKind::OpenId, &id, false).unwrap(), before);
    // A request that is not the documented form is refused, and changes nothing.
    let uploads = emu
        .requests()
        .into_iter()
        .filter(|r| r.route == Route::Upload)
        .count();
    assert_eq!(uploads, 8);
}
