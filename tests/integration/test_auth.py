"""Roles and site scopes: app keys locate only; operator keys act on their own sites only."""

from __future__ import annotations

from tests.integration.conftest import ADMIN, Api, uji_queries


def _key(api: Api, role: str, sites: list[str] | None = None) -> dict[str, str]:
    body: dict[str, object] = {"role": role, "name": f"{role} key"}
    if sites is not None:
        body["sites"] = sites
    r = api.post("/keys", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["key"].startswith("sl_") and out["role"] == role
    return {"Authorization": f"Bearer {out['key']}", "id": out["id"]}


def _h(key: dict[str, str]) -> dict[str, str]:
    return {"Authorization": key["Authorization"]}


def test_missing_or_bad_key_is_401(api: Api) -> None:
    r = api.get("/sites")
    assert r.status_code == 401 and "Authorization" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert api.get("/sites", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.get("/sites", headers={"Authorization": "Basic abc"}).status_code == 401
    assert api.post("/locate", json={"wifi": []}).status_code == 401


def test_roles_and_scopes(api: Api) -> None:
    mine = api.trained_site("operator's")
    other = api.create_site("someone else's")
    app_key = _key(api, "app")
    op = _key(api, "operator", [mine])

    # app: /locate only.
    q = {"site_id": mine, "wifi": uji_queries()[0]["wifi"]}
    assert api.post("/locate", json=q, headers=_h(app_key)).status_code == 200
    assert api.post(f"/sites/{mine}/finetune", json={"model": "wknn"}, headers=_h(app_key)).status_code == 403
    assert api.get("/sites", headers=_h(app_key)).status_code == 403
    assert api.post("/sites", json={"name": "x"}, headers=_h(app_key)).status_code == 403
    assert api.post("/keys", json={"role": "app"}, headers=_h(app_key)).status_code == 403

    # operator: its own site only.
    assert api.get(f"/sites/{mine}", headers=_h(op)).status_code == 200
    assert api.get(f"/sites/{other}", headers=_h(op)).status_code == 403
    assert api.post(f"/sites/{other}/finetune", json={"model": "wknn"}, headers=_h(op)).status_code == 403
    assert api.post(f"/sites/{other}/surveys", json={"fingerprints": []}, headers=_h(op)).status_code == 403
    assert api.get(f"/sites/{other}/models", headers=_h(op)).status_code == 403
    assert [s["id"] for s in api.get("/sites", headers=_h(op)).json()] == [mine]
    assert api.get(f"/sites/{mine}/models", headers=_h(op)).status_code == 200
    assert api.post("/sites", json={"name": "new"}, headers=_h(op)).status_code == 403
    assert api.post("/keys", json={"role": "app"}, headers=_h(op)).status_code == 403
    r = api.post(f"/sites/{mine}/finetune", json={"model": "wknn"}, headers=_h(op))
    assert r.status_code == 202
    assert api.get(f"/jobs/{r.json()['job_id']}", headers=_h(op)).status_code == 200
    assert api.post("/locate", json={**q, "site_id": other}, headers=_h(op)).status_code == 403

    # A scoped app key cannot locate at another site either.
    scoped_app = _key(api, "app", [other])
    assert api.post("/locate", json=q, headers=_h(scoped_app)).status_code == 403


def test_revoked_key_stops_working(api: Api) -> None:
    key = _key(api, "operator")
    assert api.get("/sites", headers=_h(key)).status_code == 200
    assert api.delete(f"/keys/{key['id']}", headers=ADMIN).status_code == 204
    assert api.get("/sites", headers=_h(key)).status_code == 401
    assert api.delete(f"/keys/{key['id']}", headers=ADMIN).status_code == 404


def test_key_scope_must_name_existing_sites(api: Api) -> None:
    r = api.post("/keys", json={"role": "operator", "sites": ["nope"]}, headers=ADMIN)
    assert r.status_code == 422 and "nope" in r.json()["detail"]
    r = api.post("/keys", json={"role": "wizard"}, headers=ADMIN)
    assert r.status_code == 422
