-- Course progress synced from MindTickle, per tenant user and course. Same isolation as every
-- tenant table: tenant_id leads the key, RLS enabled and forced, fail-closed policy.
create table course_progress (
    tenant_id    text not null references tenants (tenant_id),
    user_id      text not null,
    course_id    text not null,
    title        text not null,
    status       text not null check (status in ('not_started', 'in_progress', 'completed')),
    score        double precision check (score between 0 and 100),
    completed_at timestamptz,
    synced_at    timestamptz not null default now(),
    primary key (tenant_id, user_id, course_id)
);
create index course_progress_by_course on course_progress (tenant_id, course_id);

alter table course_progress enable row level security;
alter table course_progress force row level security;
create policy tenant_isolation on course_progress
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

grant select, insert, update on course_progress to __APP_ROLE__;
