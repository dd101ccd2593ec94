"""The project's tasks, written against the public django_tasks API only."""

from django_tasks import task


@task
def multiply(a, b=2):
    return {"product": a * b}


@task
def refuse(reason):
    raise PermissionError(reason)
