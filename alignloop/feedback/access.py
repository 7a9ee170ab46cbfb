"""Who reaches which project. Admins reach every project. Everyone else reaches only the projects they are a
member of: as ``labeler`` (label, see their own judgments) or as ``lead`` (also manage: settings, guidelines,
imports, exports, figures, members). An ``admin_only`` project (served-model feedback: real users' prompts)
takes no members; only admins reach it. A project's content warning is accepted on the server before its
first task is handed out, and asked again when its text changes."""

from __future__ import annotations

import functools
import hashlib

from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from alignloop.feedback.accounts import audit
from alignloop.feedback.errors import Conflict, Forbidden, Invalid, NotFound
from alignloop.feedback.models import MEMBER_ROLES, Labeler, Membership, Project, WarningAcceptance, utcnow
from alignloop.feedback.queries import get_project


def membership(s: Session, lab: Labeler, project: Project) -> Membership | None:
    return s.scalar(select(Membership).where(Membership.project_id == project.id, Membership.labeler_id == lab.id))


def can_label(s: Session, lab: Labeler, project: Project) -> bool:
    if lab.role == "admin":
        return True
    return may_label(lab, project, m.role if (m := membership(s, lab, project)) is not None else None)


def may_label(lab: Labeler, project: Project, member_role: str | None) -> bool:
    """The rule of ``can_label``, for callers that read the labeler's membership role (or None) with the project."""
    return lab.role == "admin" or (not project.admin_only and member_role is not None)


def can_manage(s: Session, lab: Labeler, project: Project) -> bool:
    if lab.role == "admin":
        return True
    m = membership(s, lab, project)
    return not project.admin_only and m is not None and m.role == "lead"


def visible_projects(s: Session, lab: Labeler) -> list[Project]:
    q = select(Project).order_by(Project.name)
    if lab.role != "admin":
        q = q.join(Membership, Membership.project_id == Project.id).where(
            Membership.labeler_id == lab.id, Project.admin_only.is_(False))
    return list(s.scalars(q))


def project_to_label(s: Session, name: str, lab: Labeler) -> Project:
    """The project, if ``lab`` may label it; a project they may not reach looks exactly like none (404)."""
    return project_and_warning(s, name, lab)[0]


def project_and_warning(s: Session, name: str, lab: Labeler) -> tuple[Project, bool]:
    """``project_to_label`` and whether ``lab`` accepted the project's current content warning, in one statement
    (the project, the labeler's membership and acceptance): every "next task" asks both."""
    row = s.execute(_reach_statement(), {"name": name, "labeler_id": lab.id}).first()
    if row is None:
        get_project(s, name)  # raises NotFound with its usual message
    p, role, digest = row
    if not may_label(lab, p, role):
        raise NotFound(f"no project named '{name}'", field="project")
    return p, _accepted(p, digest)


@functools.cache
def _reach_statement() -> Select:
    lab = bindparam("labeler_id")
    return (select(Project, Membership.role, WarningAcceptance.warning_sha256)
            .outerjoin(Membership, (Membership.project_id == Project.id) & (Membership.labeler_id == lab))
            .outerjoin(WarningAcceptance, (WarningAcceptance.project_id == Project.id) &
                       (WarningAcceptance.labeler_id == lab))
            .where(Project.name == bindparam("name")))


def project_to_manage(s: Session, name: str, lab: Labeler) -> Project:
    """The project, if ``lab`` is an admin or its lead (a plain member gets 403, anyone else 404)."""
    p = project_to_label(s, name, lab)
    if not can_manage(s, lab, p):
        raise Forbidden(f"managing project '{name}' needs its lead or an admin", field="project")
    return p


def add_member(s: Session, project: Project, lab: Labeler, role: str, actor: str, client: str = "") -> Membership:
    """Make ``lab`` a member of ``project`` as ``role`` (labeler | lead), or change their role."""
    if role not in MEMBER_ROLES:
        raise Invalid(f"'{role}' is not one of {', '.join(MEMBER_ROLES)}", field="role")
    if project.admin_only:
        raise Conflict(f"project '{project.name}' is admin-only (it holds served-model feedback); an admin must "
                       "clear admin_only before it takes members", field="project")
    if lab.role == "admin":
        raise Conflict(f"'{lab.name}' is an admin and reaches every project already", field="name")
    m = membership(s, lab, project)
    if m is None:
        m = Membership(project_id=project.id, labeler_id=lab.id, role=role)
        s.add(m)
    m.role = role
    s.flush()
    audit(s, "member.add", actor, lab.name, client, project=project.name, role=role)
    return m


def remove_member(s: Session, project: Project, lab: Labeler, actor: str, client: str = "") -> None:
    m = membership(s, lab, project)
    if m is None:
        raise NotFound(f"'{lab.name}' is not a member of '{project.name}'", field="name")
    s.delete(m)
    audit(s, "member.remove", actor, lab.name, client, project=project.name)


def members(s: Session, project: Project) -> list[dict]:
    rows = s.execute(select(Labeler.name, Membership.role, Labeler.active).join(
        Membership, Membership.labeler_id == Labeler.id).where(Membership.project_id == project.id)
        .order_by(Labeler.name))
    return [{"name": n, "role": r, "active": a} for n, r, a in rows]


def projects_of(s: Session, lab: Labeler) -> list[dict]:
    """The projects ``lab`` is a member of, with the role in each."""
    rows = s.execute(select(Project.name, Membership.role).join(Membership, Membership.project_id == Project.id)
                     .where(Membership.labeler_id == lab.id).order_by(Project.name))
    return [{"project": p, "role": r} for p, r in rows]


def _warning_digest(project: Project) -> str:
    return hashlib.sha256(project.content_warning.encode()).hexdigest()


def _accepted(project: Project, digest: str | None) -> bool:
    """Whether a labeler's accepted warning (its digest, or None) covers the project's current one (if any)."""
    return not project.content_warning or digest == _warning_digest(project)


def warning_accepted(s: Session, lab: Labeler, project: Project) -> bool:
    if not project.content_warning:
        return True
    return _accepted(project, s.scalar(select(WarningAcceptance.warning_sha256).where(
        WarningAcceptance.project_id == project.id, WarningAcceptance.labeler_id == lab.id)))


def accept_warning(s: Session, lab: Labeler, project: Project) -> None:
    row = s.scalar(select(WarningAcceptance).where(WarningAcceptance.project_id == project.id,
                                                   WarningAcceptance.labeler_id == lab.id))
    if row is None:
        row = WarningAcceptance(project_id=project.id, labeler_id=lab.id, warning_sha256="")
        s.add(row)
    row.warning_sha256, row.accepted_at = _warning_digest(project), utcnow()
