//! tenants (to be written).
use super::{BenchError, Ctx, ScenarioReport};

pub async fn run(_ctx: &Ctx<'_>) -> Result<ScenarioReport, BenchError> {
    Err(BenchError("not written yet".into()))
}
