//! SCIM lists answered from the users and groups read models' indexes (issue 18 item 5): every
//! filter form selects the users and groups the in-memory evaluation (`Filter::matches`, what
//! lists did before) selects, sorted and paged the same, in `GET` lists and in `.search`
//! (`/Users`, `/Groups` and the root); membership filters go through the membership index;
//! personal values are found through a keyed blind index that holds no plain value, and an
//! erased person is not found by their old values.

use std::time::Duration;

use quantus_commands::scim::filter::{compare_keys, sort_key, AttrPath, Filter};
use serde_json::{json, Value};

use crate::harness::*;
use crate::scim::{scim_client, scim_token, Scim};

/// A page of `/Users` as the server answers it: (totalResults, ids in order).
async fn server_page(scim: &Scim, query: &[(&str, &str)]) -> (u64, Vec<String>) {
    list_page(scim, "/Users", query).await
}

/// A page of a list (`/Users`, `/Groups`) as the server answers it.
async fn list_page(scim: &Scim, path: &str, query: &[(&str, &str)]) -> (u64, Vec<String>) {
    let r = reqwest::Client::new()
        .get(format!("{}/scim/v2{path}", scim.base))
        .query(query)
        .bearer_auth(&scim.token)
        .send()
        .await
        .unwrap();
    ids_of(r, &format!("{path} {query:?}")).await
}

/// A page of a `.search` (`/Users/.search`, `/Groups/.search`, `/.search`) with `body`.
async fn search_page(scim: &Scim, path: &str, body: &Value) -> (u64, Vec<String>) {
    let r = reqwest::Client::new()
        .post(format!("{}/scim/v2{path}/.search", scim.base))
        .json(body)
        .bearer_auth(&scim.token)
        .send()
        .await
        .unwrap();
    ids_of(r, &format!("{path}/.search {body}")).await
}

async fn ids_of(r: reqwest::Response, what: &str) -> (u64, Vec<String>) {
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{what}: {body}");
    let ids = body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    (body["totalResults"].as_u64().unwrap(), ids)
}

/// The same page from the in-memory evaluation over every user (listed by id).
fn memory_page(
    all: &[Value],
    filter: Option<&str>,
    sort_by: Option<&str>,
    descending: bool,
    start: usize,
    count: usize,
) -> (u64, Vec<String>) {
    let mut hits: Vec<&Value> = match filter {
        Some(f) => {
            let f = Filter::parse(f).unwrap();
            all.iter().filter(|r| f.matches(r)).collect()
        }
        None => all.iter().collect(),
    };
    if let Some(by) = sort_by {
        let by = AttrPath::parse(by).unwrap();
        hits.sort_by(|a, b| {
            let o = compare_keys(&sort_key(a, &by), &sort_key(b, &by));
            if descending {
                o.reverse()
            } else {
                o
            }
        });
    }
    let total = hits.len() as u64;
    let ids = hits
        .into_iter()
        .skip(start - 1)
        .take(count)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    (total, ids)
}

fn person(i: usize) -> Value {
    let mut emails = vec![
        json!({"value": format!("person{i:02}@example.com"), "type": "work", "primary": true}),
    ];
    if i % 2 == 0 {
        emails.push(json!({"value": format!("Home{}@Mail.org", i % 7), "type": "home"}));
    }
    let mut u = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": if i % 6 == 5 { format!("Zed{i}@Other.org") } else { format!("Person{i:02}@Example.com") },
        "name": {"givenName": format!("Given{}", i % 5), "familyName": format!("Family{}", i % 4)},
        "displayName": format!("Display {}", i % 6),
        "emails": emails,
        "active": i % 5 != 0,
    });
    if i % 3 != 0 {
        u["externalId"] = format!("Ext-{i}").into();
    }
    if i % 4 == 0 {
        u["phoneNumbers"] = json!([{"value": format!("+1555000{}", i % 3), "type": "work"}]);
    }
    if i % 2 == 1 {
        u["title"] = "Engineer".into();
    }
    u
}

/// Every user of the organization, by id (the unfiltered list).
async fn everyone(scim: &Scim) -> Vec<Value> {
    let r = scim.get("/Users?count=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["Resources"].as_array().unwrap().clone()
}

async fn filters_answer_as_in_memory(server: Server, database_url: &str) {
    let admin = server.client();
    let (org, _) = admin.create_org("Search").await;
    let (_, token) = scim_token(&admin, &org).await;
    let scim = scim_client(&server, &token);
    let mut people = vec![];
    for i in 0..24 {
        let r = scim.post("/Users", person(i)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        people.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // A user SCIM never described (userName and work email: the email) and an erased one.
    let made = admin
        .post(
            "/v1/users",
            json!({"organization_id": org, "email": "Rest.User@Example.org", "name": "Rest User"}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let gone = scim.post("/Users", person(99)).await;
    assert_eq!(gone.status, 201, "{}", gone.body);
    let gone_id = gone.body["id"].as_str().unwrap().to_owned();
    assert_eq!(scim.delete(&format!("/Users/{gone_id}")).await.status, 204);
    // Another organization with the same people: never in this one's answers.
    let (other, _) = admin.create_org("Elsewhere").await;
    let (_, other_token) = scim_token(&admin, &other).await;
    let elsewhere = scim_client(&server, &other_token);
    for i in [3, 4] {
        assert_eq!(elsewhere.post("/Users", person(i)).await.status, 201);
    }

    let groups = make_groups(&scim, &people).await;
    let (_, stranger) = other_org_group(&elsewhere).await;

    let all = eventually("the REST user listed", Duration::from_secs(10), || async {
        let all = everyone(&scim).await;
        (all.len() == 25).then_some(all)
    })
    .await;
    let mut ids: Vec<&str> = all.iter().map(|u| u["id"].as_str().unwrap()).collect();
    let listed = ids.clone();
    ids.sort();
    assert_eq!(ids, listed, "the unfiltered list is in id order");
    let id = all[7]["id"].as_str().unwrap();
    let created = all[12]["meta"]["created"].as_str().unwrap();
    let modified = all[5]["meta"]["lastModified"].as_str().unwrap();

    let filters: Vec<String> = [
        r#"userName eq "person03@example.com""#,
        r#"userName eq "PERSON03@EXAMPLE.COM""#,
        r#"userName ne "person03@example.com""#,
        r#"userName sw "PERSON1""#,
        r#"userName sw "rest.""#,
        r#"userName gt "person10""#,
        r#"userName ge "person10@example.com""#,
        r#"userName lt "Person05""#,
        r#"userName le "person05@example.com""#,
        r#"userName co "son1""#,
        r#"userName ew ".ORG""#,
        r#"userName pr"#,
        r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "zed""#,
        &format!(r#"id eq "{id}""#),
        &format!(r#"id ne "{id}""#),
        &format!(r#"id gt "{id}""#),
        &format!(r#"id le "{id}""#),
        &format!(r#"id sw "{}""#, &id[..2]),
        &format!(r#"id eq "{}""#, id.to_uppercase()),
        r#"externalId eq "Ext-4""#,
        r#"externalId eq "ext-4""#,
        r#"externalId sw "Ext-1""#,
        r#"externalId pr"#,
        r#"not (externalId pr)"#,
        r#"externalId ne "Ext-4""#,
        &format!(r#"meta.created gt "{created}""#),
        &format!(r#"meta.created ge "{created}""#),
        &format!(r#"meta.created lt "{}""#, created.to_lowercase()),
        &format!(r#"meta.created le "{created}""#),
        &format!(r#"meta.created eq "{created}""#),
        &format!(r#"meta.lastModified ge "{modified}""#),
        r#"meta.created gt "2000-01-01T00:00:00Z""#,
        r#"meta.created lt "2000""#,
        r#"meta.lastModified gt "a""#,
        r#"active eq true"#,
        r#"active eq false"#,
        r#"active ne true"#,
        r#"active eq "true""#,
        r#"active pr"#,
        r#"emails eq "HOME2@mail.org""#,
        r#"emails.value eq "person05@example.com""#,
        r#"emails.value eq "rest.user@example.org""#,
        r#"emails[type eq "work" and value eq "person06@example.com"]"#,
        r#"emails[type eq "home" and value eq "person06@example.com"]"#,
        r#"emails[value eq "home1@mail.org" or value eq "home3@mail.org"]"#,
        r#"emails co "mail""#,
        r#"emails.value sw "home""#,
        r#"emails.value ne "home2@mail.org""#,
        r#"name.familyName eq "family2""#,
        r#"name.givenName eq "Given1" and active eq true"#,
        r#"not (name.familyName eq "Family1")"#,
        r#"name.familyName sw "Fam""#,
        r#"displayName eq "Display 3""#,
        r#"displayName eq "rest user""#,
        r#"phoneNumbers eq "+15550001""#,
        r#"title eq "Engineer""#,
        r#"title pr and userName sw "person""#,
        r#"userName sw "person" and (externalId eq "Ext-4" or externalId eq "Ext-8")"#,
        r#"not (userName sw "person0" or active eq false)"#,
        r#"(name.familyName eq "Family1" or emails eq "home3@mail.org") and not (active eq false)"#,
        r#"userName eq "person98@example.com" or emails eq "person99@example.com""#,
        // Membership, through the membership index (groups.value is caseExact; bare
        // `groups` compares without case).
        &format!(r#"groups.value eq "{}""#, groups[1]),
        &format!(r#"groups eq "{}""#, groups[2].to_uppercase()),
        &format!(r#"groups.value eq "{}""#, groups[2].to_uppercase()),
        &format!(r#"groups[value eq "{}"]"#, groups[3]),
        &format!(r#"not (groups.value eq "{}")"#, groups[1]),
        &format!(r#"groups.value eq "{}" and active eq true"#, groups[0]),
        &format!(
            r#"groups.value eq "{}" or groups.value eq "{}""#,
            groups[1], groups[4]
        ),
        &format!(r#"groups.value ne "{}""#, groups[1]),
        r#"groups pr"#,
        r#"groups.display eq "team 2""#,
        &format!(r#"groups.value eq "{}""#, groups[5]),
        &format!(r#"groups.value eq "{}""#, groups[6]),
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    for f in &filters {
        let expected = memory_page(&all, Some(f), None, false, 1, 1000);
        let got = server_page(&scim, &[("filter", f), ("count", "1000")]).await;
        assert_eq!(got, expected, "{f}");
    }
    // Sorted and paged: in SQL where the attribute is indexed, in memory otherwise.
    for f in [
        None,
        Some(r#"userName sw "person""#),
        Some(r#"emails co "example""#),
    ] {
        for (by, order) in [
            (None, "descending"),
            (Some("userName"), "descending"),
            (Some("userName"), "ascending"),
            (Some("meta.created"), "descending"),
            (Some("meta.lastModified"), "ascending"),
            (Some("id"), "descending"),
            (Some("name.familyName"), "ascending"),
            (Some("externalId"), "descending"),
        ] {
            for (start, count) in [(1, 5), (4, 7), (22, 10), (30, 5), (2, 0)] {
                let expected = memory_page(&all, f, by, order == "descending", start, count);
                let mut body = json!({"startIndex": start, "count": count, "sortOrder": order});
                if let Some(f) = f {
                    body["filter"] = f.into();
                }
                if let Some(by) = by {
                    body["sortBy"] = by.into();
                }
                assert_eq!(
                    search_page(&scim, "/Users", &body).await,
                    expected,
                    "{body}"
                );
                let (s, c) = (start.to_string(), count.to_string());
                let mut q = vec![
                    ("startIndex", s.as_str()),
                    ("count", c.as_str()),
                    ("sortOrder", order),
                ];
                if let Some(f) = f {
                    q.push(("filter", f));
                }
                if let Some(by) = by {
                    q.push(("sortBy", by));
                }
                assert_eq!(server_page(&scim, &q).await, expected, "{q:?}");
            }
        }
    }

    groups_answer_as_in_memory(&scim, &all, &people, &groups, &stranger).await;

    // The blind index: a person is found by a personal value, in any case; the table holds
    // digests, never the value; the erased person is not found by theirs, and has no entry.
    let found = scim.find(r#"emails eq "PERSON05@example.com""#).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let db = pool(database_url).await;
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT organization_id, attribute, digest, user_id FROM user_blind_index")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(rows.len() > 100, "{}", rows.len());
    for (organization_id, attribute, digest, user_id) in &rows {
        assert!(
            [
                "emails.value",
                "phonenumbers.value",
                "name.familyname",
                "name.givenname",
                "displayname"
            ]
            .contains(&attribute.as_str()),
            "{attribute}"
        );
        let row = format!("{organization_id} {digest} {user_id}").to_lowercase();
        for plain in [
            "person", "example", "mail.org", "family", "given", "display", "5550", "rest",
        ] {
            assert!(
                !row.contains(plain),
                "{plain} in clear in user_blind_index: {row}"
            );
        }
        assert!(
            digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
            "{digest}"
        );
    }
    // The same address in two organizations: two digests.
    let of_user = |u: &str| {
        rows.iter()
            .filter(|r| r.3 == u && r.1 == "emails.value")
            .map(|r| r.2.clone())
            .collect::<Vec<_>>()
    };
    let here = scim.find(r#"userName eq "person03@example.com""#).await;
    let there = elsewhere
        .find(r#"userName eq "person03@example.com""#)
        .await;
    assert_eq!((here.len(), there.len()), (1, 1));
    assert!(of_user(&here[0])
        .iter()
        .all(|d| !of_user(&there[0]).contains(d)));
    // Plain columns hold userName and externalId only (as the brief allows); no name or email
    // but the userName.
    let plain: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT user_name_lc, external_id FROM users_view")
            .fetch_all(&db)
            .await
            .unwrap();
    for (user_name, external) in &plain {
        let cell = format!("{user_name:?} {external:?}").to_lowercase();
        assert!(!cell.contains("home") && !cell.contains("family"), "{cell}");
    }
    assert!(
        of_user(&gone_id).is_empty(),
        "the erased person keeps blind-index entries"
    );
    assert!(scim
        .find(r#"emails eq "person99@example.com""#)
        .await
        .is_empty());
    assert!(scim
        .find(r#"name.familyName eq "Family3" and emails eq "person99@example.com""#)
        .await
        .is_empty());
    let erased: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT user_name_lc, external_id FROM users_view WHERE id = $1")
            .bind(&gone_id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(erased, vec![(None, None)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn scim_filters_from_indexes_answer_as_the_in_memory_evaluation_on_sqlite_and_postgres() {
    let dir = temp_dir("scim-search");
    let sqlite = format!("sqlite://{}", dir.join("quantus.db").display());
    filters_answer_as_in_memory(Server::embedded(&dir), &sqlite).await;
    let url = fresh_database().await;
    let postgres = Server::start(
        &temp_dir("scim-search-pg"),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &[],
    );
    filters_answer_as_in_memory(postgres, &url).await;
}

/// A store made before the search columns gets them filled when the server starts, from the
/// read model it has; `projections rebuild users` fills them the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_from_before_the_search_columns_is_indexed_at_start() {
    let dir = temp_dir("scim-search-migrate");
    let sqlite = format!("sqlite://{}", dir.join("quantus.db").display());
    let (org, token) = {
        let server = Server::embedded(&dir);
        let admin = server.client();
        let (org, _) = admin.create_org("Before").await;
        let (_, token) = scim_token(&admin, &org).await;
        let scim = scim_client(&server, &token);
        for i in 0..6 {
            assert_eq!(scim.post("/Users", person(i)).await.status, 201);
        }
        (org, token)
    };
    // The tables as a store of the previous release has them.
    {
        let db = pool(&sqlite).await;
        for statement in [
            "DROP INDEX users_view_org_name",
            "DROP INDEX users_view_org_external",
            "ALTER TABLE users_view DROP COLUMN user_name_lc",
            "ALTER TABLE users_view DROP COLUMN external_id",
            "DROP TABLE user_blind_index",
        ] {
            sqlx::query(statement).execute(&db).await.unwrap();
        }
        db.close().await;
    }
    let server = Server::embedded(&dir);
    let scim = scim_client(&server, &token);
    assert_eq!(
        scim.find(r#"userName eq "person04@example.com""#)
            .await
            .len(),
        1
    );
    assert_eq!(scim.find(r#"emails eq "home4@mail.org""#).await.len(), 1);
    assert_eq!(scim.find(r#"externalId eq "Ext-5""#).await.len(), 1);
    assert_eq!(scim.find(r#"name.familyName eq "Family1""#).await.len(), 2);
    let _ = org;
    drop(server);
    assert_model_equals_replay("users", &["--data-dir", dir.to_str().unwrap()]);
}

/// Groups of the organization: members from `people`, one renamed, one with a member removed
/// and one deleted afterwards (the membership index follows each change). Their ids by index
/// (the deleted one's included: it matches nothing).
async fn make_groups(scim: &Scim, people: &[String]) -> Vec<String> {
    let mut ids = vec![];
    for k in 0..7usize {
        let members: Vec<Value> = people
            .iter()
            .enumerate()
            .filter(|(i, _)| i % (k + 2) == 0)
            .map(|(_, id)| json!({"value": id}))
            .collect();
        let mut g = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": if k % 2 == 0 { format!("Team {k}") } else { format!("team {k}") },
            "members": members,
        });
        if k % 3 != 0 {
            g["externalId"] = format!("G-{k}").into();
        }
        if k == 6 {
            g["displayName"] = "Admins".into();
        }
        let r = scim.post("/Groups", g).await;
        assert_eq!(r.status, 201, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // Renamed: found by the new name only.
    let r = scim
        .patch(
            &format!("/Groups/{}", ids[4]),
            json!([{"op": "replace", "path": "displayName", "value": "Renamed Team"}]),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A member removed: no longer found through the index.
    let r = scim
        .patch(
            &format!("/Groups/{}", ids[1]),
            json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", people[3])}]),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Deleted: its members are no longer in it.
    assert_eq!(
        scim.delete(&format!("/Groups/{}", ids[5])).await.status,
        204
    );
    ids
}

/// A group of another organization with one of its people: never in this one's answers.
async fn other_org_group(elsewhere: &Scim) -> (String, String) {
    let r = elsewhere.get("/Users?count=1").await;
    let member = r.body["Resources"][0]["id"].as_str().unwrap().to_owned();
    let g = elsewhere
        .post(
            "/Groups",
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                "displayName": "Team 1",
                "externalId": "G-1",
                "members": [{"value": member}],
            }),
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    (g.body["id"].as_str().unwrap().to_owned(), member)
}

/// `/Groups` (GET and `.search`) and the root `/.search` answer as the in-memory evaluation
/// over every group (and every user then every group, for the root).
async fn groups_answer_as_in_memory(
    scim: &Scim,
    users: &[Value],
    people: &[String],
    groups: &[String],
    stranger: &str,
) {
    let r = scim.get("/Groups?count=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let all: Vec<Value> = r.body["Resources"].as_array().unwrap().clone();
    assert_eq!(all.len(), 6, "{}", r.body);
    let mut ids: Vec<&str> = all.iter().map(|g| g["id"].as_str().unwrap()).collect();
    let listed = ids.clone();
    ids.sort();
    assert_eq!(ids, listed, "the unfiltered group list is in id order");
    // Each user lists exactly the groups that list them (the membership index for a page,
    // the groups model for the groups).
    for u in users {
        let uid = u["id"].as_str().unwrap();
        let mut of_user: Vec<&str> = u["groups"]
            .as_array()
            .map(|a| a.iter().map(|g| g["value"].as_str().unwrap()).collect())
            .unwrap_or_default();
        of_user.sort();
        let listing: Vec<&str> = all
            .iter()
            .filter(|g| {
                g["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["value"] == uid)
            })
            .map(|g| g["id"].as_str().unwrap())
            .collect();
        assert_eq!(of_user, listing, "{uid}");
    }
    let created = all[2]["meta"]["created"].as_str().unwrap();
    let modified = all[3]["meta"]["lastModified"].as_str().unwrap();
    let gid = &groups[2];
    let filters: Vec<String> = [
        r#"displayName eq "team 1""#,
        r#"displayName eq "TEAM 2""#,
        r#"displayName eq "Team 4""#,
        r#"displayName eq "renamed team""#,
        r#"displayName ne "admins""#,
        r#"displayName sw "TEAM""#,
        r#"displayName gt "team 2""#,
        r#"displayName le "Team 3""#,
        r#"displayName co "am""#,
        r#"displayName ew "3""#,
        r#"displayName pr"#,
        r#"urn:ietf:params:scim:schemas:core:2.0:Group:displayName sw "t""#,
        &format!(r#"id eq "{gid}""#),
        &format!(r#"id ne "{gid}""#),
        &format!(r#"id gt "{gid}""#),
        &format!(r#"id eq "{}""#, gid.to_uppercase()),
        &format!(r#"id eq "{stranger}""#),
        r#"externalId eq "G-2""#,
        r#"externalId eq "g-2""#,
        r#"externalId sw "G-""#,
        r#"externalId pr"#,
        r#"not (externalId pr)"#,
        &format!(r#"meta.created gt "{created}""#),
        &format!(r#"meta.created le "{created}""#),
        &format!(r#"meta.lastModified ge "{modified}""#),
        r#"meta.lastModified gt "a""#,
        &format!(r#"members.value eq "{}""#, people[0]),
        &format!(r#"members.value eq "{}""#, people[3]),
        &format!(r#"members.value eq "{}""#, people[6]),
        &format!(r#"members eq "{}""#, people[6].to_uppercase()),
        &format!(r#"members.value eq "{}""#, people[6].to_uppercase()),
        &format!(r#"members[value eq "{}"]"#, people[4]),
        &format!(r#"not (members.value eq "{}")"#, people[4]),
        &format!(
            r#"members.value eq "{}" and displayName sw "team""#,
            people[12]
        ),
        &format!(r#"members.value eq "{}" or externalId eq "G-1""#, people[9]),
        &format!(r#"members.value ne "{}""#, people[0]),
        r#"members pr"#,
        r#"members.display pr"#,
    ]
    .iter()
    .map(|f| f.to_string())
    .collect();
    for f in &filters {
        let expected = memory_page(&all, Some(f), None, false, 1, 1000);
        let got = list_page(scim, "/Groups", &[("filter", f), ("count", "1000")]).await;
        assert_eq!(got, expected, "{f}");
        let body = json!({"filter": f});
        assert_eq!(
            search_page(scim, "/Groups", &body).await,
            expected,
            "{body}"
        );
    }
    for f in [
        None,
        Some(r#"displayName sw "team""#),
        Some(r#"displayName co "a""#),
    ] {
        for (by, order) in [
            (None, "descending"),
            (Some("displayName"), "descending"),
            (Some("displayName"), "ascending"),
            (Some("meta.created"), "descending"),
            (Some("meta.lastModified"), "ascending"),
            (Some("id"), "descending"),
            (Some("externalId"), "ascending"),
        ] {
            for (start, count) in [(1, 2), (3, 3), (6, 4), (9, 1), (2, 0)] {
                let expected = memory_page(&all, f, by, order == "descending", start, count);
                let (s, c) = (start.to_string(), count.to_string());
                let mut q = vec![
                    ("startIndex", s.as_str()),
                    ("count", c.as_str()),
                    ("sortOrder", order),
                ];
                if let Some(f) = f {
                    q.push(("filter", f));
                }
                if let Some(by) = by {
                    q.push(("sortBy", by));
                }
                assert_eq!(list_page(scim, "/Groups", &q).await, expected, "{q:?}");
            }
        }
    }

    // The root `.search`: users then groups, as one list.
    let mut everything = users.to_vec();
    everything.extend(all.iter().cloned());
    let uid = users[9]["id"].as_str().unwrap();
    let root_filters: Vec<Option<String>> = [
        None,
        Some(format!(r#"id eq "{uid}""#)),
        Some(format!(r#"id eq "{gid}""#)),
        Some(format!(r#"id lt "{gid}""#)),
        Some(format!(r#"meta.created gt "{created}""#)),
        Some(r#"displayName eq "display 3""#.to_owned()),
        Some(r#"displayName eq "admins""#.to_owned()),
        Some(r#"externalId sw "G-""#.to_owned()),
        Some(r#"externalId pr"#.to_owned()),
        Some(format!(r#"members.value eq "{}""#, people[6])),
        Some(format!(r#"groups.value eq "{gid}""#)),
        Some(r#"userName sw "person1""#.to_owned()),
        Some(r#"displayName sw "team" or userName sw "zed""#.to_owned()),
    ]
    .into_iter()
    .collect();
    for f in &root_filters {
        for (by, order) in [
            (None, "ascending"),
            (Some("meta.created"), "descending"),
            (Some("id"), "ascending"),
            (Some("meta.lastModified"), "ascending"),
            (Some("displayName"), "ascending"),
        ] {
            for (start, count) in [(1, 1000), (1, 5), (20, 10), (24, 3), (40, 5), (3, 0)] {
                let expected = memory_page(
                    &everything,
                    f.as_deref(),
                    by,
                    order == "descending",
                    start,
                    count,
                );
                let mut body = json!({"startIndex": start, "count": count, "sortOrder": order});
                if let Some(f) = f {
                    body["filter"] = f.as_str().into();
                }
                if let Some(by) = by {
                    body["sortBy"] = by.into();
                }
                assert_eq!(search_page(scim, "", &body).await, expected, "{body}");
            }
        }
    }
}
