"""The W6 job function for RQ (imported by path in the work horse; Django is set up in
the worker process before it forks)."""


def insert_row(data):
    from bench_site.models import Row

    Row.objects.create(seq=data["seq"])
