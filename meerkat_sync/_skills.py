"""Method family: skills/list, skills/inspect (behind the ``skills`` capability)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ._calls import ClientCalls, listed
from ._deadline import USE_DEFAULT, Timeout
from ._params import invalid
from .types import SkillDetails, SkillInfo


class SkillMethods(ClientCalls):
    """The skills the runtime can load into sessions."""

    def list_skills(self, *, timeout: Timeout = USE_DEFAULT) -> List[SkillInfo]:
        """Every skill the runtime sees (builtin, project, user), shadowed ones included."""
        reply = self._gated("skills/list", {}, timeout, capability="skills")
        return listed("skills/list", reply, "skills", SkillInfo)

    def inspect_skill(
        self, skill_id: str, *, source: Optional[str] = None, timeout: Timeout = USE_DEFAULT
    ) -> SkillDetails:
        """One skill with its full body; an unknown id raises :class:`SkillNotFoundError`.

        ``source`` picks the skill source when several hold the id (as ``list_skills``
        names it, e.g. ``"embedded"``); a source that does not hold it is "not found" too.
        """
        if not isinstance(skill_id, str) or not skill_id:
            raise invalid(f"skill_id must be a non-empty string, not {skill_id!r}")
        params: Dict[str, Any] = {"id": skill_id}
        if source is not None:
            if not isinstance(source, str):
                raise invalid(f"source must be a string or None, not {source!r}")
            params["source"] = source
        return self._gated_typed("skills/inspect", params, SkillDetails, timeout, capability="skills")
