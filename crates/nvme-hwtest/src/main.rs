//! Hardware test suite (placeholder until the VFIO transport lands).
fn main() {
    eprintln!("nvme-hwtest: not implemented yet");
    std::process::exit(2);
}
