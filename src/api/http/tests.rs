use super::*;

fn answer(status: u16, body: &[u8]) -> HttpAnswer {
    HttpAnswer {
        status,
        headers: HeaderMap::new(),
        body: body.to_vec(),
        held: MemoryHold::none(),
    }
}

/// xorshift: the same random answers on every run.
fn random_bytes(seed: &mut u64, max_len: usize) -> Vec<u8> {
    let mut next = || crate::hash::xorshift(seed);
    let len = (next() as usize) % (max_len + 1);
    // Half the bodies start like JSON, to reach the envelope parser.
    let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
    if next() % 2 == 0 && !body.is_empty() {
        body[0] = b'{';
    }
    body
}

#[test]
fn random_answers_never_panic_and_never_mean_absent() {
    let mut seed = 0x1234_5678_9abc_def1;
    for i in 0..20_000 {
        let status = [200, 400, 404, 429, 500, 503][i % 6];
        let body = random_bytes(&mut seed, 64);
        for result in [
            face_from_answer(answer(status, &body)).map(drop),
            page_from_answer(answer(status, &body)).map(drop),
        ] {
            assert!(
                !matches!(result, Err(ApiError::UserNotFound | ApiError::FaceNotFound)),
                "{status} {body:?}"
            );
        }
        if status == 200 && body.first().is_some_and(|b| *b != b'{') {
            assert_eq!(
                face_from_answer(answer(200, &body)).unwrap().bytes,
                body,
                "any 200 that is not JSON is the image"
            );
        }
    }
}

#[test]
fn error_bodies_are_read_whatever_the_status() {
    let not_found = br#"{"code":1490107,"msg":"user face not found"}"#;
    assert_eq!(
        face_from_answer(answer(400, not_found)),
        Err(ApiError::FaceNotFound)
    );
    assert_eq!(
        face_from_answer(answer(200, not_found)),
        Err(ApiError::FaceNotFound)
    );
    assert!(matches!(
        face_from_answer(answer(200, br#"{"code":0,"data":{}}"#)),
        Err(ApiError::Failed(_))
    ));
    assert!(matches!(
        face_from_answer(answer(400, b"")),
        Err(ApiError::Transient(_))
    ));
    assert!(matches!(
        face_from_answer(answer(200, b"")),
        Err(ApiError::Transient(_))
    ));
    let truncated_list = br#"{"code":0,"msg":"success","data":{"items":[],"has_more":true}}"#;
    assert!(matches!(
        page_from_answer(answer(200, truncated_list)),
        Err(ApiError::Failed(_))
    ));
    let huge_id = format!(
        r#"{{"code":0,"data":{{"items":[{{"user_id":"{}","feature":{{"face_uploaded":true}}}}],"has_more":false}}}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(
        page_from_answer(answer(200, huge_id.as_bytes()))
            .unwrap()
            .users[0]
            .user_id
            .len(),
        100_000
    );
}

#[test]
fn ids_that_are_not_text_cost_only_themselves() {
    let mut body = br#"{"code":0,"data":{"items":[{"user_id":"ou_a","feature":{"face_uploaded":true}},{"user_id":"ou_"#.to_vec();
    body.push(0xff);
    body.extend_from_slice(br#"","feature":{"face_uploaded":true}},{"user_id":"x\ud800y","feature":{"face_uploaded":true}},{"user_id":"\u5f20","feature":{"face_uploaded":true}}],"has_more":false}}"#);
    let page = page_from_answer(answer(200, &body)).unwrap();
    let ids: Vec<&str> = page.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(ids, ["ou_a", "张"]);
    assert_eq!(page.unreadable_ids, 2);
}

#[test]
fn ids_become_one_segment() {
    assert_eq!(encode("a b+c%?#/.."), "a%20b%2Bc%25%3F%23%2F..");
    assert_eq!(encode("张"), "%E5%BC%A0");
    assert_eq!(encode("ou_AZ-09.~"), "ou_AZ-09.~");
}
