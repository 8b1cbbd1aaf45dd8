//! What the route derives cannot say about the API, in one place: the document's title and
//! bearer scheme ([`ApiDoc`]) and the refinements added after the routes are collected
//! ([`refine`]): path syntax and the body fields that go together.

use utoipa::OpenApi;

use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chronos", description = "Versioned, cost-first persistence for JSON records."),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// `{collection}` in paths (see `CollectionName`): 1-64 of letters, digits, `_ -`, starting with a
/// letter or digit; names starting with `system` or `chronos` (any case) are reserved.
const COLLECTION_PATTERN: &str =
    "^(?![Ss][Yy][Ss][Tt][Ee][Mm]|[Cc][Hh][Rr][Oo][Nn][Oo][Ss])[A-Za-z0-9][A-Za-z0-9_-]{0,63}$";
/// `{id}` in paths (see `ItemId`): 1-128 of letters, digits, `_ - . :`, starting with a letter or
/// digit. The same pattern is on the `id` and `afterId` parameters in `items.rs`.
const ID_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$";

/// What the derives cannot say, added to the generated document so that it describes what the
/// handlers accept: the syntax of `{collection}` and `{id}` (a parameter tuple takes a pattern
/// only as a literal, and there are two dozen of them), and the body fields that go together.
pub fn refine(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::ParameterIn;
    use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};

    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for param in operations
            .into_iter()
            .flatten()
            .flat_map(|op| op.parameters.iter_mut().flatten())
        {
            let pattern = match (&param.parameter_in, param.name.as_str()) {
                (ParameterIn::Path, "collection") => COLLECTION_PATTERN,
                (ParameterIn::Path, "id") => ID_PATTERN,
                _ => continue,
            };
            if let Some(RefOr::T(Schema::Object(schema))) = &mut param.schema {
                schema.pattern = Some(pattern.to_owned());
            }
        }
    }

    // `{"a": <non-null value of its type>}`: `null` means absent to the handlers.
    let present = |field: &str, ty: Type| {
        ObjectBuilder::new()
            .property(field, ObjectBuilder::new().schema_type(ty))
            .required(field)
    };
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let mut constrain = |name: &str, constraint: Schema| {
        if let Some(schema) = components.schemas.remove(name) {
            let both = AllOfBuilder::new().item(schema).item(constraint).build();
            components
                .schemas
                .insert(name.to_owned(), RefOr::T(Schema::AllOf(both)));
        }
    };
    // Exactly one of `ov` and `at` (else 400).
    constrain(
        "RestoreItemRequest",
        Schema::OneOf(
            OneOfBuilder::new()
                .item(present("ov", Type::Integer))
                .item(present("at", Type::String))
                .build(),
        ),
    );
    // Exactly one of `cv` and `at` (else 400).
    constrain(
        "RestoreCollectionRequest",
        Schema::OneOf(
            OneOfBuilder::new()
                .item(present("cv", Type::Integer))
                .item(present("at", Type::String))
                .build(),
        ),
    );
    // At least one of `keepLast` and `maxAgeDays` (else 422).
    constrain(
        "PruneRequest",
        Schema::AnyOf(
            AnyOfBuilder::new()
                .item(present("keepLast", Type::Integer))
                .item(present("maxAgeDays", Type::Number))
                .build(),
        ),
    );
}
