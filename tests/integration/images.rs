//! Images among uploaded files: recognised by their bytes, thumbnailed by the server for
//! the conversation's participants only, and refused (left attachments) when they are
//! not images, are damaged, or would decode to too many pixels.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Api, Backend, TestApp, error_code, spawn_app_with};
use crate::ws_client::{Client, alice_and_bob, user};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A `w`×`h` picture with a gradient, so that scaling shows.
fn picture(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x % 256) as u8, (y % 256) as u8, 128]))
}

/// A PNG of `w`×`h` pixels that stores none of them: the header alone, then a few zero
/// bytes of image data. It claims whatever size it likes.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = {
            let mut c = flate2::Crc::new();
            c.update(&out[start..]);
            c.sum()
        };
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Alice uploads `bytes` as `name` (declared `mime`) into `conv`, in the chunks the
/// server asks for; returns the body of the `file` message Bob receives, and the file's id.
async fn send_file(
    app: &TestApp,
    alice: &str,
    bob_ws: &mut Client,
    conv: &str,
    name: &str,
    mime: &str,
    bytes: &[u8],
) -> (Value, String) {
    let sha = hex(&Sha256::digest(bytes));
    let body = json!({"conversation_id": conv, "name": name, "size": bytes.len(), "sha256": sha, "mime": mime});
    let r = app.client.post(app.url("/api/transfers")).bearer_auth(alice).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "upload of {name}");
    let t: Value = r.json().await.unwrap();
    let id = t["id"].as_str().unwrap();
    for (i, chunk) in bytes.chunks(t["chunk_size"].as_u64().unwrap() as usize).enumerate() {
        let r = app
            .client
            .put(app.url(&format!("/api/transfers/{id}/chunks/{i}")))
            .bearer_auth(alice)
            .header("x-chunk-sha256", hex(&Sha256::digest(chunk)))
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    loop {
        let m = bob_ws.next_of("message").await;
        if m["kind"] == "file" {
            let meta: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
            if meta["name"] == name {
                return (meta, m["file_id"].as_str().unwrap().to_owned());
            }
        }
    }
}

/// Alice and Bob, contacts, in a conversation; Bob is connected.
struct Chat {
    app: TestApp,
    alice: String,
    bob: String,
    bob_ws: Client,
    conv: String,
}

async fn chat(backend: Backend, tweak: impl FnOnce(&mut switchboard::config::Config)) -> Chat {
    let app = spawn_app_with(backend, tweak).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let bob_ws = Client::connect(&app, &bob).await;
    alice_ws.send_to_user("hello", &bob_id, "hello").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    Chat { app, alice, bob, bob_ws, conv }
}

impl Chat {
    async fn send(&mut self, name: &str, mime: &str, bytes: &[u8]) -> (Value, String) {
        send_file(&self.app, &self.alice, &mut self.bob_ws, &self.conv, name, mime, bytes).await
    }

    /// Bob asks for the thumbnail of `file`.
    async fn thumbnail(&self, file: &str) -> reqwest::Response {
        self.app.get_as(&format!("/api/files/{file}/thumbnail"), &self.bob).await
    }

    /// Bob downloads `file`: its `(Content-Type, Content-Disposition)`.
    async fn download_headers(&self, file: &str) -> (String, String) {
        let r = self.app.get_as(&format!("/api/files/{file}"), &self.bob).await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        (h("content-type"), h("content-disposition"))
    }

    /// Bob gets the thumbnail of `file`, decoded; asserts the download headers on it.
    async fn thumbnail_image(&self, file: &str) -> (String, DynamicImage) {
        let r = self.thumbnail(file).await;
        assert_eq!(r.status(), StatusCode::OK, "thumbnail of {file}");
        let h = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(h("x-content-type-options"), "nosniff");
        assert_eq!(h("content-security-policy"), "sandbox; default-src 'none'");
        assert!(h("cache-control").starts_with("private"), "{}", h("cache-control"));
        let mime = h("content-type");
        let bytes = r.bytes().await.unwrap();
        (mime, image::load_from_memory(&bytes).unwrap())
    }
}

fn thumbs_under(dir: &Path) -> usize {
    let Ok(shards) = std::fs::read_dir(dir.join("files").join("thumbs")) else { return 0 };
    shards.flatten().map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count())).sum()
}

#[tokio::test]
async fn images_of_the_four_formats_get_upright_thumbnails_for_the_participants_only() {
    let mut c = chat(Backend::Sqlite, |_| {}).await;
    let (carol, _) = user(&c.app, "carol").await;

    // Types come from the bytes: a PNG declared as anything is a PNG.
    let see_through =
        DynamicImage::ImageRgba8(RgbaImage::from_fn(1200, 600, |x, _| Rgba([255, 0, 0, (x % 256) as u8])));
    let (meta, png) = c.send("alpha.png", "application/octet-stream", &encode(&see_through, ImageFormat::Png)).await;
    assert_eq!(
        meta,
        json!({"name": "alpha.png", "size": meta["size"], "mime": "image/png", "width": 1200, "height": 600})
    );
    let (mime, thumb) = c.thumbnail_image(&png).await;
    assert_eq!(mime, "image/png", "transparency stays: a PNG thumbnail");
    assert_eq!((thumb.width(), thumb.height()), (480, 240), "fits 480 px and keeps the shape");

    let photo = DynamicImage::ImageRgb8(picture(900, 1500));
    let (meta, jpeg) = c.send("photo.jpg", "image/jpeg", &encode(&photo, ImageFormat::Jpeg)).await;
    assert_eq!(
        (meta["mime"].as_str(), meta["width"].as_u64(), meta["height"].as_u64()),
        (Some("image/jpeg"), Some(900), Some(1500))
    );
    let (mime, thumb) = c.thumbnail_image(&jpeg).await;
    assert_eq!(mime, "image/jpeg");
    assert_eq!((thumb.width(), thumb.height()), (288, 480));
    assert_eq!(c.download_headers(&jpeg).await.0, "image/jpeg", "the full image is shown inline");
    assert!(c.download_headers(&jpeg).await.1.starts_with("inline"));

    // A small image is not enlarged; GIF and WebP too.
    let icon = DynamicImage::ImageRgb8(picture(40, 30));
    let (meta, gif) = c.send("icon.gif", "image/png", &encode(&icon, ImageFormat::Gif)).await;
    assert_eq!(meta["mime"], "image/gif", "the declared type was wrong; the bytes say GIF");
    assert_eq!(c.thumbnail_image(&gif).await.1.width(), 40);
    let (meta, webp) =
        c.send("pic.webp", "", &encode(&DynamicImage::ImageRgba8(see_through.to_rgba8()), ImageFormat::WebP)).await;
    assert_eq!((meta["mime"].as_str(), meta["width"].as_u64()), (Some("image/webp"), Some(1200)));
    assert_eq!(c.thumbnail_image(&webp).await.1.width(), 480);

    // Carol is no participant: neither the thumbnail nor the file exists for her.
    let r = c.app.get_as(&format!("/api/files/{png}/thumbnail"), &carol).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = c.app.get_as("/api/files/not-a-uuid/thumbnail", &c.bob).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = c.app.client.get(c.app.url(&format!("/api/files/{png}/thumbnail"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Deleting the message deletes the thumbnail with the bytes.
    assert_eq!(thumbs_under(c.app.data_dir.path()), 4);
    let history = c.app.get_json(&format!("/api/conversations/{}/messages", c.conv), &c.alice).await;
    let msg = history["messages"].as_array().unwrap().iter().find(|m| m["file_id"] == png).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c.app.client.delete(c.app.url(&format!("/api/messages/{msg}"))).bearer_auth(&c.alice).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(thumbs_under(c.app.data_dir.path()), 3);
    let r = c.thumbnail(&png).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
}

#[tokio::test]
async fn an_upright_thumbnail_follows_the_exif_orientation() {
    let mut c = chat(Backend::Sqlite, |_| {}).await;
    // A 300×100 JPEG whose EXIF says "rotate 90°": it is shown 100×300.
    let jpeg = encode(&DynamicImage::ImageRgb8(picture(300, 100)), ImageFormat::Jpeg);
    let exif: &[u8] = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
    let mut rotated = jpeg[..2].to_vec();
    rotated.extend_from_slice(&[0xFF, 0xE1]);
    rotated.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
    rotated.extend_from_slice(exif);
    rotated.extend_from_slice(&jpeg[2..]);
    let (meta, id) = c.send("turned.jpg", "image/jpeg", &rotated).await;
    assert_eq!((meta["width"].as_u64(), meta["height"].as_u64()), (Some(100), Some(300)));
    let thumb = c.thumbnail_image(&id).await.1;
    assert_eq!((thumb.width(), thumb.height()), (100, 300));
}

#[tokio::test]
async fn bombs_fakes_and_svg_stay_attachments_without_thumbnails() {
    let mut c = chat(Backend::Sqlite, |cfg| cfg.files.image_max_pixels = 1_000_000).await;
    let no_thumbnail = async |c: &Chat, id: &str| {
        let r = c.thumbnail(id).await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "no_thumbnail", "file {id}");
    };

    // A decompression bomb: 60,000 × 60,000 pixels claimed in a file of a few dozen bytes.
    // Refused from the header: never decoded, never allocated.
    let (meta, bomb) = c.send("bomb.png", "image/png", &png_claiming(60_000, 60_000)).await;
    assert_eq!(meta["mime"], "application/octet-stream", "not shown as an image: {meta}");
    assert!(meta.get("width").is_none());
    no_thumbnail(&c, &bomb).await;
    assert_eq!(c.download_headers(&bomb).await.0, "application/octet-stream");
    assert!(c.download_headers(&bomb).await.1.starts_with("attachment"));

    // Within each side's limit, past the pixel count (here 1 million).
    let (meta, wide) = c.send("wide.png", "image/png", &png_claiming(2_000, 600)).await;
    assert!(meta.get("width").is_none(), "{meta}");
    no_thumbnail(&c, &wide).await;
    // A real image past the pixel count is an attachment too.
    let (meta, big) = c
        .send("big.jpg", "image/jpeg", &encode(&DynamicImage::ImageRgb8(picture(1500, 1000)), ImageFormat::Jpeg))
        .await;
    assert!(meta.get("width").is_none(), "{meta}");
    no_thumbnail(&c, &big).await;

    // A header that looks right over pixels that are not there: shown as an image by its
    // header, but no thumbnail comes of it, now or when asked again.
    let (meta, hollow) = c.send("hollow.png", "image/png", &png_claiming(400, 300)).await;
    assert_eq!(meta["width"], 400);
    no_thumbnail(&c, &hollow).await;
    no_thumbnail(&c, &hollow).await;

    // A page declared as a PNG; an SVG (a document that can hold script); a GIF signature
    // over noise.
    let (meta, html) = c.send("cat.png", "image/png", b"<html><script>alert(1)</script></html>").await;
    assert_eq!(meta["mime"], "application/octet-stream");
    no_thumbnail(&c, &html).await;
    assert_eq!(c.download_headers(&html).await.0, "application/octet-stream");
    let svg = br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#;
    let (meta, svg) = c.send("logo.svg", "image/svg+xml", svg).await;
    assert!(meta.get("width").is_none());
    no_thumbnail(&c, &svg).await;
    assert!(c.download_headers(&svg).await.1.starts_with("attachment"));
    let mut noise = b"GIF89a".to_vec();
    noise.extend((0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let (_, noise) = c.send("noise.gif", "image/gif", &noise).await;
    no_thumbnail(&c, &noise).await;

    // A real JPEG with 21 MiB after it: past the bytes an image may have at this pixel
    // limit (4 a pixel and 16 MiB), so it is never read whole into memory.
    let mut padded = encode(&DynamicImage::ImageRgb8(picture(100, 100)), ImageFormat::Jpeg);
    padded.resize(padded.len() + (21 << 20), 0);
    let (meta, padded) = c.send("padded.jpg", "image/jpeg", &padded).await;
    assert!(meta.get("width").is_none(), "{meta}");
    no_thumbnail(&c, &padded).await;

    // The node still works: a real image after all that gets its thumbnail.
    let (_, fine) =
        c.send("fine.png", "image/png", &encode(&DynamicImage::ImageRgb8(picture(64, 64)), ImageFormat::Png)).await;
    assert_eq!(c.thumbnail_image(&fine).await.1.width(), 64);
}

#[tokio::test]
async fn postgres_an_image_is_recorded_as_one_and_gets_its_thumbnail() {
    let mut c = chat(Backend::Postgres, |_| {}).await;
    let (meta, id) =
        c.send("p.png", "image/png", &encode(&DynamicImage::ImageRgb8(picture(1000, 250)), ImageFormat::Png)).await;
    assert_eq!((meta["width"].as_u64(), meta["height"].as_u64()), (Some(1000), Some(250)));
    let thumb = c.thumbnail_image(&id).await.1;
    assert_eq!((thumb.width(), thumb.height()), (480, 120));
    // History over REST describes it the same way.
    let history = c.app.get_json(&format!("/api/conversations/{}/messages", c.conv), &c.bob).await;
    let m = history["messages"].as_array().unwrap().iter().find(|m| m["file_id"] == id).unwrap();
    let body: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, meta);
}
