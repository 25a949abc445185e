use std::time::Instant;
#[test]
#[ignore]
fn breakdown() {
    for s in ["02026/2/28", "2026/2/028", "+2026/2/28", "2026/02/28", " 2026/2/28", "2026/02/2 ", "2026/+2/28", "2026/ 2/28"] {
        eprintln!("{s:?} -> {:?}", ferry_proto::spec::parse_date(s));
    }
    let t = Instant::now();
    let mut n = 0;
    for i in 0..2_000_000u32 {
        let s = if i % 2 == 0 { "2026/01/15" } else { "2025/12/31" };
        n += ferry_proto::spec::parse_date(s).map_or(0, |d| d.len());
    }
    eprintln!("2M parse_date: {:?} {n}", t.elapsed());
    let col = ferry_proto::spec::SALES.columns[5];
    let t = Instant::now();
    for _ in 0..1_000_000u32 {
        n += matches!(ferry_proto::spec::parse_field(&col, "12.5"), Ok(_)) as usize;
    }
    eprintln!("1M dec: {:?} {n}", t.elapsed());
}
