//! `#[task]`: turns a plain Rust function into a Celeriac task.
//!
//! For `fn add(x: i64, y: i64) -> i64` it keeps the function as written and adds a
//! type `add` (in the type namespace, so the names do not clash) implementing
//! `celeriac_sdk::Task`, which decodes the JSON arguments, calls the function and
//! encodes the result. `celeriac_sdk::export!(add)` then lists it.

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, Expr, ExprLit, FnArg, ItemFn, Lit, Meta, Pat, ReturnType, Token, Type};

#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = parse_macro_input!(item as ItemFn);
    let name = match parse_name(attr) {
        Ok(name) => name,
        Err(err) => return err.to_compile_error().into(),
    };
    match expand(func, name) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// `#[task]` or `#[task(name = "math.plus")]`.
fn parse_name(attr: TokenStream) -> syn::Result<Option<String>> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse(attr)?;
    let mut name = None;
    for meta in metas {
        match meta {
            Meta::NameValue(nv) if nv.path.is_ident("name") => match nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => name = Some(s.value()),
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "expected a string: name = \"plugin.task\"",
                    ))
                }
            },
            other => {
                return Err(syn::Error::new_spanned(
                    other,
                    "unknown option; expected name = \"...\"",
                ))
            }
        }
    }
    Ok(name)
}

fn expand(func: ItemFn, name: Option<String>) -> syn::Result<proc_macro2::TokenStream> {
    let fn_ident = func.sig.ident.clone();
    let fn_name = fn_ident.to_string();
    let vis = func.vis.clone();
    let doc = first_doc_line(&func);
    let name_tokens = match name {
        Some(n) => quote!(::core::option::Option::Some(#n)),
        None => quote!(::core::option::Option::None),
    };

    let mut bindings = Vec::new();
    let mut call_args = Vec::new();
    let mut declared = 0usize;
    for (index, input) in func.sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat_type) = input else {
            return Err(syn::Error::new_spanned(input, "a task cannot take self"));
        };
        let param_name = match &*pat_type.pat {
            Pat::Ident(p) => p.ident.to_string(),
            _ => format!("arg{index}"),
        };
        let var = format_ident!("__arg{}", index);
        let ty = &pat_type.ty;
        let binding = match last_segment(ty).as_deref() {
            Some("Args") => quote!(let #var: #ty = __binder.rest_args();),
            Some("Kwargs") => quote!(let #var: #ty = __binder.rest_kwargs();),
            _ => {
                declared += 1;
                quote!(let #var: #ty = __binder.next(#param_name)?;)
            }
        };
        bindings.push(binding);
        call_args.push(var);
    }

    let returns_result = match &func.sig.output {
        ReturnType::Type(_, ty) => last_segment(ty).as_deref() == Some("Result"),
        ReturnType::Default => false,
    };
    let call = if returns_result {
        quote!(let __value = #fn_ident(#(#call_args),*).map_err(::celeriac_sdk::TaskError::from)?;)
    } else {
        quote!(let __value = #fn_ident(#(#call_args),*);)
    };

    Ok(quote! {
        #func

        #[allow(non_camel_case_types)]
        #[doc(hidden)]
        #vis struct #fn_ident {
            _private: (),
        }

        impl ::celeriac_sdk::Task for #fn_ident {
            const FUNCTION: &'static str = #fn_name;
            const NAME: ::core::option::Option<&'static str> = #name_tokens;
            const DOC: &'static str = #doc;

            fn invoke(
                args_json: &str,
                kwargs_json: &str,
            ) -> ::core::result::Result<::std::string::String, ::celeriac_sdk::TaskError> {
                let mut __binder = ::celeriac_sdk::ArgBinder::new(#fn_name, args_json, kwargs_json)?;
                #(#bindings)*
                __binder.finish(#declared)?;
                #call
                ::celeriac_sdk::encode_result(&__value)
            }
        }
    })
}

fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

fn first_doc_line(func: &ItemFn) -> String {
    func.attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .find_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Some(s.value().trim().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_default()
}
