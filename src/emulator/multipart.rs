//! `multipart/form-data` (RFC 7578) as the emulator's face upload reads it:
//! strictly, so that a client sending something the real service might
//! misread fails against the emulator first.

/// One part: its `name`, its `filename` if it has one, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The boundary of a `multipart/form-data` Content-Type, or why not.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut fields = content_type.split(';').map(str::trim);
    let media = fields.next().unwrap_or("");
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "Content-Type must be multipart/form-data, not {media:?}"
        ));
    }
    for field in fields {
        if let Some((key, value)) = field.split_once('=') {
            if key.trim().eq_ignore_ascii_case("boundary") {
                let value = value.trim().trim_matches('"');
                // RFC 2046: 1 to 70 characters.
                if value.is_empty() || value.len() > 70 {
                    return Err("the boundary must have 1 to 70 characters".into());
                }
                return Ok(value.to_owned());
            }
        }
    }
    Err("multipart/form-data without a boundary".into())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Splits a body into its parts. Anything but a well-formed body — a part
/// without Content-Disposition: form-data and a name, a missing closing
/// delimiter — is an error, never a partial form.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<FormPart>, String> {
    let delimiter = format!("--{boundary}");
    let mut at = find(body, delimiter.as_bytes(), 0).ok_or("the body has no boundary delimiter")?
        + delimiter.len();
    let next_delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        if !body[at..].starts_with(b"\r\n") {
            return Err("a delimiter is not followed by CRLF".into());
        }
        at += 2;
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a part's headers never end")?;
        let head = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| "a part's headers are not UTF-8")?;
        let end = find(body, next_delimiter.as_bytes(), head_end + 4)
            .ok_or("the body ends without its closing delimiter")?;
        parts.push(part(head, body[head_end + 4..end].to_vec())?);
        at = end + next_delimiter.len();
    }
}

fn part(head: &str, body: Vec<u8>) -> Result<FormPart, String> {
    let mut disposition = None;
    let mut content_type = None;
    for line in head.split("\r\n") {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a part header without a colon: {line:?}"))?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => disposition = Some(value.trim().to_owned()),
            "content-type" => content_type = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let disposition = disposition.ok_or("a part without Content-Disposition")?;
    let mut fields = disposition.split(';').map(str::trim);
    if fields.next() != Some("form-data") {
        return Err(format!(
            "a part's disposition is not form-data: {disposition:?}"
        ));
    }
    let (mut name, mut filename) = (None, None);
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value)
            .to_owned();
        match key.trim() {
            "name" => name = Some(value),
            "filename" => filename = Some(value),
            _ => {}
        }
    }
    Ok(FormPart {
        name: name.ok_or("a part without a name")?,
        filename,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, Option<&str>, &[u8])], boundary: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, data) in parts {
            out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let file = filename
                .map(|f| format!("; filename=\"{f}\""))
                .unwrap_or_default();
            out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        out
    }

    #[test]
    fn reads_every_part_whole() {
        // The image holds CRLF and a near-boundary: only the real delimiter ends it.
        let image: &[u8] = b"\xff\xd8\r\n--bound\r\nx\xff\xd9";
        let form = body(
            &[
                ("files", Some("face.jpg"), image),
                ("file_type", None, b"jpg"),
            ],
            "bounda",
        );
        let parts = parse(&form, "bounda").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "files");
        assert_eq!(parts[0].filename.as_deref(), Some("face.jpg"));
        assert_eq!(parts[0].body, image);
        assert_eq!(parts[1].body, b"jpg");
        assert_eq!(
            boundary("multipart/form-data; boundary=\"bounda\"").unwrap(),
            "bounda"
        );
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
    }

    #[test]
    fn refuses_what_is_not_whole() {
        let form = body(&[("files", Some("f.jpg"), b"abc")], "b0");
        for cut in [form.len() - 3, form.len() / 2, 5] {
            assert!(parse(&form[..cut], "b0").is_err(), "cut at {cut}");
        }
        assert!(parse(&form, "other").is_err());
        let nameless = b"--b0\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b0--";
        assert!(parse(nameless, "b0").is_err());
    }
}
