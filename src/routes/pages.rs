//! Server-rendered pages (askama, auto-escaped) and the embedded static files.
//!
//! Static files are compiled into the binary, so a release binary runs from any
//! directory with no files beside it.

use askama::Template;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;

use crate::error::AppError;

pub fn router() -> Router {
    Router::new().push(Router::new().get(index)).push(Router::with_path("static/{file}").get(static_file))
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage<'a> {
    version: &'a str,
}

/// `GET /`: the landing page.
#[handler]
async fn index(res: &mut Response) -> Result<(), AppError> {
    let html = IndexPage { version: env!("CARGO_PKG_VERSION") }.render().map_err(anyhow::Error::from)?;
    res.render(Text::Html(html));
    Ok(())
}

/// `(name, content type, bytes)` of every static file.
const STATIC_FILES: &[(&str, &str, &str)] =
    &[("style.css", "text/css; charset=utf-8", include_str!("../../static/style.css"))];

/// `GET /static/{file}`: one of the embedded files; 404 for any other name (names are
/// looked up, never joined to a path).
#[handler]
async fn static_file(req: &mut Request, res: &mut Response) -> Result<(), AppError> {
    let name = req.param::<String>("file").unwrap_or_default();
    let Some((_, ctype, body)) = STATIC_FILES.iter().find(|(n, _, _)| *n == name) else {
        return Err(AppError::not_found("not_found", "no such file"));
    };
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    res.write_body(*body).map_err(|e| AppError::Internal(anyhow::anyhow!("write body: {e}")))?;
    Ok(())
}
