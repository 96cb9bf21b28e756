//! `spanprof-operator-gen`: prints a generated manifest (`crd`, `clusterrole` or `role`) to stdout.

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    let text = match what.as_str() {
        "crd" => spanprof_operator::crd::crd_yaml()?,
        "clusterrole" => spanprof_operator::rbac::cluster_role_yaml()?,
        "role" => spanprof_operator::rbac::role_yaml()?,
        _ => anyhow::bail!("usage: spanprof-operator-gen crd|clusterrole|role"),
    };
    print!("{text}");
    Ok(())
}
