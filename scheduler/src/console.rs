//! The web console: a single page served by every scheduler from assets compiled into the
//! binary (`scheduler/console/`), so the README's one command also serves it. It is a client of
//! the v1 API like any other: it holds no state and no privilege of its own, and every call it
//! makes carries the user's token and is authorized like the CLI's (the console itself, as
//! static files, needs no authentication; the data behind it does).
//!
//! * `GET /` redirects to `/console/`; `GET /console/` is the page, `/console/app.js` and
//!   `/console/style.css` its script and style sheet.
//! * Headers: a strict Content-Security-Policy (scripts and styles from this origin only, no
//!   inline script, no framing), `nosniff`, no referrer (run URLs carry ids, signed URLs carry
//!   signatures), `no-cache` with an `ETag` of the build (a new binary's assets are fetched at
//!   once; unchanged ones answer 304).
//!
//! What it must not do: embed a token, call anything but this origin, or render data as HTML
//! (the script builds DOM nodes with `textContent` only).

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// One asset: path under `/console/`, content type, bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 3] = [
    Asset {
        path: "",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../console/index.html"),
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../console/app.js"),
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../console/style.css"),
    },
];

/// Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The ETag of the assets: this build's version and a hash of their bytes.
fn etag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for a in &ASSETS {
            h.update(a.path.as_bytes());
            h.update([0]);
            h.update(a.body.as_bytes());
        }
        let d = h.finalize();
        let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("\"{}-{hex}\"", env!("CARGO_PKG_VERSION"))
    })
}

/// The console's routes (outside authentication: static files only).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route(
            "/console/",
            get(|h: HeaderMap| async move { serve("", &h) }),
        )
        .route(
            "/console/{file}",
            get(
                |axum::extract::Path(file): axum::extract::Path<String>, h: HeaderMap| async move {
                    serve(&file, &h)
                },
            ),
        )
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no console file '{path}' (the console is at /console/)"),
        )
            .into_response();
    };
    let tag = etag();
    let common = [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ETAG,
            HeaderValue::from_str(tag).unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        ),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt as _;

    async fn get(path: &str, inm: Option<&str>) -> Response {
        let mut b = Request::get(path);
        if let Some(t) = inm {
            b = b.header(header::IF_NONE_MATCH, t);
        }
        router::<()>()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    /// The rules of the console's code the CSP cannot enforce alone: no HTML parsing of data,
    /// no code from strings, no other origin called, no inline script, style or handler.
    #[test]
    fn the_assets_build_the_page_from_text_only() {
        let js = include_str!("../console/app.js");
        let code: String = js
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "http://",
            "https://",
            "localStorage",
        ] {
            assert!(!code.contains(banned), "app.js uses {banned}");
        }
        let html = include_str!("../console/index.html");
        for banned in [
            " style=",
            " onclick=",
            " onload=",
            " onsubmit=",
            "<script>",
            "<style",
        ] {
            assert!(!html.contains(banned), "index.html has {banned}");
        }
    }

    #[tokio::test]
    async fn assets_are_served_with_a_strict_policy_and_revalidated() {
        let r = get("/console/", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let tag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        let body = to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("src=\"app.js\""), "{html}");
        assert!(
            !html.contains("<script>"),
            "no inline script: the CSP forbids it"
        );
        let r = get("/console/app.js", Some(&tag)).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = get("/console/style.css", Some("\"other\"")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/css")
        );
        let r = get("/console/secret.key", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = get("/", None).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/console/");
    }
}
