-- A third kind of upstream job: refresh the tenant's course catalog into its cache
-- namespace. Queued by an instance that does not run the tenant's actor (scale-out: any
-- instance serves any tenant's API), run by the owner under the tenant's rate budget.
alter table upstream_jobs drop constraint upstream_jobs_kind_check;
alter table upstream_jobs add constraint upstream_jobs_kind_check
    check (kind in ('sync_progress', 'push_user', 'refresh_catalog'));
