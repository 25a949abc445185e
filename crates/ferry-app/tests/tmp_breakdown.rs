use std::io::{Read, Write};
use std::time::Instant;
#[test]
#[ignore]
fn breakdown() {
    let mut s = String::new();
    for i in 1..=1_000_000usize {
        s.push_str(&format!(
            "\"I{}\",\"L{}\",\"C{}\",2026/01/{:02},2026/01/{:02},{}.5,2.10,-3.75,1,\"INV {i}\"\n",
            i % 500, i % 7, i % 1000, i % 28 + 1, i % 28 + 1, i % 9
        ));
    }
    let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    enc.write_all(s.as_bytes()).unwrap();
    let bz = enc.finish().unwrap();
    let t = Instant::now();
    let mut r = ferry_io::digest::HashingReader::new(ferry_io::bz::capped_decoder(&bz[..], 1 << 40));
    std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    eprintln!("decompress+hash: {:?}", t.elapsed());
    let t = Instant::now();
    let mut csv = csv::ReaderBuilder::new().has_headers(false).from_reader(s.as_bytes());
    let mut rec = csv::ByteRecord::new();
    let mut n = 0;
    while csv.read_byte_record(&mut rec).unwrap() { n += rec.len(); }
    eprintln!("csv: {:?} {n}", t.elapsed());
    let t = Instant::now();
    let mut csv = csv::ReaderBuilder::new().has_headers(false).from_reader(s.as_bytes());
    let mut v = Vec::new();
    while csv.read_byte_record(&mut rec).unwrap() {
        for (c, raw) in ferry_proto::spec::SALES.columns.iter().zip(rec.iter()) {
            v.push(ferry_proto::spec::parse_field(c, std::str::from_utf8(raw).unwrap()).unwrap());
        }
        if v.len() > 10000 { v.clear(); }
    }
    eprintln!("csv+parse_field: {:?}", t.elapsed());
    let _ = bz.len();
    let mut x = Vec::new(); (&bz[..]).read_to_end(&mut x).unwrap();
}
