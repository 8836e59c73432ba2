-- Quiz submissions, recorded once per submission id (never cached). Same isolation rules.
create table quiz_submissions (
    tenant_id     text not null references tenants (tenant_id),
    submission_id text not null,
    user_id       text not null,
    course_id     text not null,
    quiz_id       text not null,
    answers       jsonb not null,
    score         double precision not null check (score between 0 and 100),
    submitted_at  timestamptz not null,
    recorded_at   timestamptz not null default now(),
    primary key (tenant_id, submission_id)
);
create index quiz_submissions_by_user_course on quiz_submissions (tenant_id, user_id, course_id);

alter table quiz_submissions enable row level security;
alter table quiz_submissions force row level security;
create policy tenant_isolation on quiz_submissions
    using (tenant_id = nullif(current_setting('app.tenant_id', true), ''))
    with check (tenant_id = nullif(current_setting('app.tenant_id', true), ''));

grant select, insert on quiz_submissions to __APP_ROLE__;
