//! Hostile input: the command line, the cgroup path parser, mountinfo, the exposition
//! parser, the BTF reader, the event decoder, the scrape negotiation, the HTTP client's
//! response reader and the web configuration reader fed many generated inputs (deterministic, so
//! a failure reproduces): no panic, and every error is one line that names the problem.
//! Needs no root.

use clap::Parser;
use observer::cgroups::cgroup2_mount_from;
use observer::cli::Cli;
use observer::exposition::parse::parse;
use observer::kernel::btf::Btf;
use observer::kube::parse_kubernetes;
use observer::testutil::Rng;
use observer::units::{parse_duration, parse_ring_size};
use observer_common::{EVENT_SIZE, Event};

#[test]
fn decoder_takes_any_bytes() {
    let mut r = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20_000 {
        let b = r.bytes(64);
        let decoded = Event::from_bytes(&b);
        assert_eq!(
            decoded.is_some(),
            b.len() == EVENT_SIZE,
            "{} bytes",
            b.len()
        );
        if let Some(e) = decoded {
            assert_eq!(e.to_bytes().as_slice(), b.as_slice());
        }
    }
}

const PATH_PARTS: &[&str] = &[
    "kubepods",
    "kubepods.slice",
    "kubepods-burstable.slice",
    "burstable",
    "besteffort",
    "kubepods-pod1b6c3d2a_4e5f_4a1b_9c8d_7e6f5a4b3c2d.slice",
    "pod1b6c3d2a-4e5f-4a1b-9c8d-7e6f5a4b3c2d",
    "cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "crio-.scope",
    "docker-",
    "pod",
    "-pod.slice",
    ".slice",
    ".scope",
    "",
    "..",
    "é",
    "\u{0}",
    "system.slice",
    "a-pod-b.slice",
];

#[test]
fn kubernetes_path_parser_takes_any_path() {
    let mut r = Rng(0xdead_beef_cafe_f00d);
    for _ in 0..20_000 {
        let n = r.below(7);
        let mut path = String::new();
        for _ in 0..n {
            path.push('/');
            path.push_str(r.pick(PATH_PARTS));
            if r.below(4) == 0 {
                path.push(char::from(r.next_u64().to_le_bytes()[0] % 128));
            }
        }
        if let Some(k) = parse_kubernetes(&path) {
            assert_eq!(k.pod_uid.len(), 36, "{path}");
            assert!(
                k.container_id.is_empty() || k.container_id.len() == 64,
                "{path}"
            );
        }
    }
}

#[test]
fn mountinfo_parser_takes_any_text() {
    let mut r = Rng(42);
    for _ in 0..5_000 {
        let raw = r.bytes(200);
        let text = String::from_utf8_lossy(&raw).replace('\u{fffd}', " - ");
        let _ = cgroup2_mount_from(&text);
    }
}

#[test]
fn value_parsers_answer_with_one_line() {
    let mut r = Rng(7);
    let units = [
        "", "s", "ms", "m", "h", "K", "M", "KiB", "MiB", "x", "9", "-", " ",
    ];
    for _ in 0..20_000 {
        let s = format!(
            "{}{}{}",
            r.next_u64() % 100_000,
            r.pick(&units),
            r.pick(&units)
        );
        for e in [parse_duration(&s).err(), parse_ring_size(&s).err()]
            .into_iter()
            .flatten()
        {
            assert!(!e.contains('\n') && !e.is_empty(), "{s}: {e}");
        }
    }
}

#[test]
fn command_line_takes_any_arguments() {
    let mut r = Rng(99);
    let words = [
        "--listen",
        "--probe-mode",
        "--window",
        "--max-cgroups",
        "--ring-size",
        "--signals",
        "--check",
        "--cgroup-ttl",
        "--ebpf-object",
        "auto",
        "fentry",
        "bogus",
        "0",
        "1",
        "-1",
        "60s",
        "256K",
        "127.0.0.1:1",
        "::1",
        "sendmsg,bogus",
        "",
        "--",
        "-x",
        "99999999999999999999",
    ];
    for _ in 0..5_000 {
        let n = r.below(6);
        let args: Vec<&str> = std::iter::once("socklat")
            .chain((0..n).map(|_| r.pick(&words)))
            .collect();
        if let Err(e) = Cli::try_parse_from(&args) {
            let text = e.to_string();
            assert!(text.starts_with("error:"), "{args:?}: {text}");
        }
    }
}

#[test]
fn exposition_parser_takes_any_text() {
    let mut r = Rng(0x5eed);
    let parts = [
        "m", "{", "}", "a=\"", "\"", "\\", ",", " ", "1", "+Inf", "NaN", "\n", "#", "=", "x_y",
    ];
    for _ in 0..20_000 {
        let n = r.below(12);
        let text: String = (0..n).map(|_| r.pick(&parts)).collect();
        if let Err(e) = parse(&text) {
            assert!(!e.to_string().is_empty(), "{text}");
        }
    }
}

#[test]
fn btf_reader_takes_any_bytes() {
    let mut r = Rng(0xb7f);
    for _ in 0..5_000 {
        let mut b = r.bytes(256);
        if b.len() >= 2 && r.below(2) == 0 {
            // Mostly valid magic, so that the header and type walk are reached.
            b[0] = 0x9f;
            b[1] = 0xeb;
        }
        if let Err(e) = Btf::parse(&b) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

#[test]
fn negotiation_takes_any_header() {
    use observer::server::negotiate::{format, gzip};
    let mut r = Rng(0xacce);
    let parts = [
        "application/vnd.google.protobuf",
        "proto=io.prometheus.client.MetricFamily",
        "encoding=delimited",
        "text/plain",
        "*/*",
        "gzip",
        "q=",
        "q=0",
        "q=0.5",
        "q=NaN",
        "q=inf",
        ";",
        ",",
        "=",
        " ",
        "\"",
    ];
    for _ in 0..20_000 {
        let n = r.below(10);
        let h: String = (0..n).map(|_| r.pick(&parts)).collect();
        let _ = format(Some(&h));
        let _ = gzip(Some(&h));
    }
}

#[test]
fn http_client_takes_any_response() {
    use observer::http_client::read_response;
    let mut r = Rng(0x4e57);
    let parts = [
        "HTTP/1.1 200 OK\r\n",
        "Content-Length: 3\r\n",
        "Content-Length: x\r\n",
        "Transfer-Encoding: chunked\r\n",
        "\r\n",
        "3\r\nabc\r\n",
        "0\r\n\r\n",
        "ffffffffffffffffff\r\n",
        "fffffffffff\r\n",
        "Content-Length: 99999999999\r\n",
        "abc",
        ":",
        "\n",
    ];
    for _ in 0..20_000 {
        let n = r.below(8);
        let text: String = (0..n).map(|_| r.pick(&parts)).collect();
        let mut bytes = text.as_bytes();
        if let Err(e) = read_response(&mut bytes, false) {
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}

#[test]
fn web_config_reader_takes_any_yaml() {
    let mut r = Rng(0x3eb);
    let parts = [
        "tls_server_config:\n",
        "basic_auth_users:\n",
        "http_server_config:\n",
        "  cert_file: a\n",
        "  key_file: b\n",
        "  client_auth_type: RequireAndVerifyClientCert\n",
        "  min_version: TLS13\n",
        "  u: $2y$04$x\n",
        "  headers:\n",
        "    X-Frame-Options: deny\n",
        "- x\n",
        "{",
        ": ",
        "\n",
    ];
    let dir = std::env::temp_dir().join(format!("socklat-hostile-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.yml");
    for _ in 0..2_000 {
        let n = r.below(8);
        let text: String = (0..n).map(|_| r.pick(&parts)).collect();
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = observer::server::web_config::load(&path) {
            let line = observer::report::chain(&e);
            assert!(line.contains("web.yml"), "{text:?}: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
